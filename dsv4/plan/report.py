"""Plans as JSON-ready dicts and as text: one plan, the recipe ladder and the device table."""
from __future__ import annotations

from .catalog import GIB, Memory
from .kv import KV_DTYPES, kv_bytes_per_token
from .ladder import Quality
from .placement import Split
from .planner import ASSUMPTIONS, Plan
from .tensor_parallel import TP_ASSUMPTIONS, TensorParallelPlan


def _tier_dict(m: Memory, split: Split) -> dict:
    shares = split.on(m.name)
    return {"name": m.name, "label": m.label, "kind": m.kind,
            "capacity_bytes": None if m.memory_gib is None else int(m.memory_gib * GIB),
            "bandwidth_gbs": m.bandwidth_gbs,
            "stored_bytes": {s.item: int(s.nbytes) for s in shares},
            "experts": sum(s.units for s in shares if s.item == "experts"),
            "read_bytes_per_step": sum(s.read_bytes for s in shares),
            "seconds_per_step": sum(s.seconds for s in shares)}


def plan_dict(plan: Plan) -> dict:
    """Every number of a plan; bytes are exact integers, speeds floats (None when the split cannot run)."""
    p, w, wl = plan.facts.params, plan.weights, plan.workload
    return {"recipe": w.recipe, "context": wl.context, "batch_size": wl.batch, "kv_dtype": wl.kv_dtype,
            "total_params": p.total, "active_params": p.active, "mtp_params": p.mtp,
            "weight_bytes": w.total, "weight_bytes_by_group": dict(w.by_group), "mtp_weight_bytes": w.mtp,
            "memory_weight_bytes": w.memory, "memory_weight_bytes_by_group": dict(w.in_memory),
            "expert_bytes": w.expert,
            "active_weight_bytes_per_token": plan.active_weight_bytes,
            "kv_bytes_per_token": plan.kv_bytes_per_token, "kv_bytes": plan.kv_bytes,
            "kv_read_bytes_per_step": plan.kv_read, "fits": plan.fits, "runs": plan.split.runs,
            "decode_tokens_per_s": plan.decode_tokens_per_s, "headroom": plan.system.headroom,
            "tiers": _tier_rows(plan),
            "unplaced": dict(plan.split.unplaced), "assumptions": list(ASSUMPTIONS)}


def _rank_dict(tp: TensorParallelPlan, rank: int) -> dict:
    w, split, device = tp.ranks[rank], tp.splits[rank], tp.plan.system.device
    return {"rank": rank, "weight_bytes": w.total, "memory_weight_bytes": w.memory,
            "memory_weight_bytes_by_group": dict(w.in_memory), "kv_bytes": tp.plan.kv_bytes,
            "total_bytes": tp.needs(rank), "capacity_bytes": int(device.memory_gib * GIB),
            "usable_bytes": int(tp.capacity), "fits": tp.needs(rank) <= tp.capacity,
            "experts": sum(s.units for s in split.shares if s.item == "experts"),
            "read_bytes_per_step": sum(s.read_bytes for s in split.shares),
            "seconds_per_step": sum(s.seconds for s in split.shares), "unplaced": dict(split.unplaced)}


def tp_dict(tp: TensorParallelPlan) -> dict:
    """`plan_dict` whose machine keys (fits, runs, decode_tokens_per_s; tiers and unplaced: the largest rank's) are
    the `tp.world` devices', plus tp, the link, the collectives and one `per_device` row per rank."""
    split = tp.splits[tp.largest]
    return plan_dict(tp.plan) | {
        "fits": tp.fits, "runs": tp.runs, "decode_tokens_per_s": tp.decode_tokens_per_s,
        "tiers": [_tier_dict(tp.plan.system.device, split)], "unplaced": dict(split.unplaced),
        "assumptions": list(ASSUMPTIONS + TP_ASSUMPTIONS), "tp": tp.world, "interconnect_gbs": tp.link.bandwidth_gbs,
        "link_latency_us": tp.link.latency_us, "collectives_per_step": tp.collectives,
        "comm_bytes_per_step": tp.comm_bytes, "comm_seconds_per_step": tp.comm_seconds,
        "per_device": [_rank_dict(tp, r) for r in range(tp.world)]}


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; the first column left-aligned, the rest right-aligned."""
    widths = [max(len(r[i]) for r in [headers] + rows) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(n) if i == 0 else c.rjust(n) for i, (c, n) in enumerate(zip(cells, widths)))

    return "\n".join(line(r) for r in [headers] + rows)


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def speed(plan: Plan) -> str:
    s = plan.decode_tokens_per_s
    return "cannot run" if s is None else f"{s:.1f}"


def memory_line(m: Memory) -> str:
    size = "" if m.memory_gib is None else f"{m.memory_gib:g} GiB, "
    return f"{m.label} ({size}{m.bandwidth_gbs:g} GB/s)"


def _model_lines(plan: Plan) -> list[str]:
    """The model part of a report: parameters, weights by group, the expert size and the KV cache."""
    p, w, wl, cfg = plan.facts.params, plan.weights, plan.workload, plan.facts.cfg
    head = [f"recipe {w.recipe}, context {wl.context:,}, batch {wl.batch}, KV {wl.kv_dtype}",
            f"parameters: {p.total / 1e9:.2f} B total, {p.active / 1e9:.2f} B active per token "
            f"(MTP {p.mtp / 1e9:.2f} B, not loaded)"]
    groups = ([[g, gib(n), gib(w.in_memory[g])] for g, n in w.by_group.items()]
              + [["total", gib(w.total), gib(w.memory)], ["MTP block", gib(w.mtp), "-"],
                 ["read per token", "-", gib(plan.active_weight_bytes)]])
    kv = (f"KV cache: {plan.kv_bytes_per_token:,.0f} B per token, {gib(plan.kv_bytes)} GiB at {wl.context:,} "
          f"tokens x {wl.batch} (a step reads {gib(plan.kv_read)} GiB); per token: "
          + ", ".join(f"{name} {kv_bytes_per_token(cfg, wl.context, *KV_DTYPES[name]):,.0f} B"
                      for name in ("bf16", "official")))
    expert = f"one routed expert: {w.expert / 2**20:.2f} MiB, the same in the file, in RAM and on the device"
    return head + [table(["weights", "file GiB", "memory GiB"], groups), expert, kv]


def format_plan(plan: Plan) -> str:
    """The human report of one plan."""
    w, cfg = plan.weights, plan.facts.cfg
    machine = " + ".join(memory_line(m) for m in plan.system.memories())
    need = f"needs {gib(w.memory + plan.kv_bytes)} GiB, {plan.system.headroom:.0%} of memory kept free"
    return "\n".join(_model_lines(plan) + [
        f"machine: {machine}", f"fits on the device: {'yes' if plan.fits else 'no'} ({need})", format_split(plan),
        f"decode: {speed(plan)} tokens/s (k={cfg.num_experts_per_tok} of {cfg.n_routed_experts} experts per layer)",
        "assumptions: " + "; ".join(ASSUMPTIONS)])


def format_tp_plan(tp: TensorParallelPlan) -> str:
    """The human report of a tensor-parallel plan: the model, then one row per device."""
    plan, cfg, link = tp.plan, tp.plan.facts.cfg, tp.link
    rows = [[str(r["rank"]), gib(r["memory_weight_bytes"]), gib(r["kv_bytes"]), gib(r["total_bytes"]),
             gib(r["capacity_bytes"]), gib(r["usable_bytes"]), "yes" if r["fits"] else "no",
             str(r["experts"]), gib(r["read_bytes_per_step"]), f"{r['seconds_per_step'] * 1e3:.2f}"]
            for r in (_rank_dict(tp, rank) for rank in range(tp.world))]
    fits = (f"fits on every device: {'yes' if tp.fits else 'no'} (the largest rank needs {gib(tp.needs(tp.largest))}"
            f" GiB, {plan.system.headroom:.0%} of memory kept free)")
    if not tp.fits:
        fits += ("; with --tp each rank keeps its weights and the whole KV cache on its device (no offload to host "
                 "RAM or disk), so this plan cannot run")
    tokens = tp.decode_tokens_per_s
    return "\n".join(_model_lines(plan) + [
        f"machine: {tp.world} x {memory_line(plan.system.device)}, tensor parallel, links of "
        f"{link.bandwidth_gbs:g} GB/s + {link.latency_us:g} µs per collective",
        table(["rank", "weights GiB", "KV GiB", "total GiB", "device GiB", "usable GiB", "fits", "experts",
               "read/step GiB", "ms/step"], rows), fits,
        f"collectives: {tp.collectives} per step, {tp.comm_bytes / 2**20:.2f} MiB sent per device, "
        f"{tp.comm_seconds * 1e3:.2f} ms",
        f"decode: {'cannot run' if tokens is None else f'{tokens:.1f}'} tokens/s (k={cfg.num_experts_per_tok} of "
        f"{cfg.n_routed_experts} experts per layer; the slowest rank's reads plus the collectives)",
        "assumptions: " + "; ".join(ASSUMPTIONS + TP_ASSUMPTIONS)])


def format_split(plan: Plan) -> str:
    rows = []
    for t in _tier_rows(plan):
        stored = t["stored_bytes"]
        rows.append([t["name"], gib(t["capacity_bytes"]), gib(stored.get("dense")), gib(stored.get("kv")),
                     str(t["experts"]), gib(t["read_bytes_per_step"]), f"{t['seconds_per_step'] * 1e3:.2f}"])
    unplaced = "".join(f"\ndoes not fit anywhere: {n:,} units of {item}" for item, n in plan.split.unplaced.items())
    return table(["tier", "GiB", "dense GiB", "KV GiB", "experts", "read/step GiB", "ms/step"], rows) + unplaced


def _tier_rows(plan: Plan) -> list[dict]:
    return [_tier_dict(m, plan.split) for m in plan.system.memories()]


def format_ladder(plans: list[Plan], quality: Quality, skipped: list[str]) -> str:
    """The recipe ladder on one machine: size, bytes read per token, fit, speed and measured quality."""
    device = plans[0].system.device.name if plans else "device"
    rows = [[p.weights.recipe, gib(p.weights.total), gib(p.weights.memory), gib(p.active_weight_bytes),
             "yes" if p.fits else "no", speed(p), quality.cell(p.weights.recipe)] for p in plans]
    text = table(["recipe", "file GiB", "memory GiB", "read/token GiB", f"fits {device}", "tokens/s", "quality"],
                 rows)
    source = (f"quality: {quality.metric} (benchmarks/results/quant_quality.json)" if quality.values
              else "quality: not measured yet (benchmarks/bench_quant_quality.py writes it)")
    return text + f"\n{source}" + "".join(f"\nskipped: {why}" for why in skipped)


def format_devices(plans: list[Plan]) -> str:
    """Which devices can run one recipe and how fast: fit, experts per tier, tokens/s."""
    rows = []
    for p in plans:
        experts = " / ".join(f"{t['kind']} {t['experts']}" for t in _tier_rows(p))
        rows.append([p.system.device.label, f"{p.system.device.memory_gib:g}", f"{p.system.device.bandwidth_gbs:g}",
                     "yes" if p.fits else "no", experts, speed(p)])
    return table(["device", "GiB", "GB/s", "fits", "experts per tier", "tokens/s"], rows)
