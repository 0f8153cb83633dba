"""`dsv4 plan`: what a config needs under a recipe (weights by group, KV cache), whether it fits a device, the
split of experts over device / RAM / disk and the bandwidth-bound decode speed; `--table` for every recipe and
catalog device, `--plot` for the speed chart; `--tp N` for N devices, one model-parallel rank each."""
from __future__ import annotations

import argparse
import json
import sys

from dsv4.config import ConfigError, ModelConfig
from dsv4.plan.catalog import KINDS, names
from dsv4.plan.errors import PlanError
from dsv4.plan.kv import KV_DTYPES
from dsv4.plan.ladder import catalog_systems, device_plans, read_quality, recipe_plans, speed_grid
from dsv4.plan.planner import Plan, Workload, make_plan, model_facts, resolve_config
from dsv4.plan.plot import plot_speeds
from dsv4.plan.report import format_devices, format_ladder, format_plan, format_tp_plan, plan_dict, tp_dict
from dsv4.plan.system import System, resolve
from dsv4.plan.tensor_parallel import Link, check_tp, make_tp_plan
from dsv4.quant.errors import QuantError
from dsv4.quant.recipes import get_recipe

DEVICE_KINDS = tuple(k for k in KINDS if k != "disk")


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="memory and decode-speed plan for a config, recipe and device",
                              description=__doc__)
    p.add_argument("config", nargs="?", default="flash", help="preset (flash, pro, tiny...), config.json or "
                   "checkpoint directory (default flash)")
    p.add_argument("--recipe", default="FP4", help="quantization recipe (BF16, FP8, FP4, Q8_0 ... Q2_K; default FP4)")
    p.add_argument("--context", type=int, help="tokens per sequence, up to the config's max_position_embeddings "
                   "(1,048,576 for Flash and Pro; default 4096 or that max if smaller)")
    p.add_argument("--batch", type=int, default=1, help="sequences decoded together (default 1)")
    p.add_argument("--kv-dtype", default="bf16", choices=list(KV_DTYPES), help="KV cache entry storage: bf16, fp32 "
                   "or official (FP8 entries + FP4 indexer keys with their scales, as `--kv-dtype official` stores "
                   "them; default bf16)")
    p.add_argument("--device", help=f"catalog device, default rtx-4090: {names(DEVICE_KINDS)}")
    p.add_argument("--vram", type=float, help="device memory in GiB (overrides the catalog; with --bandwidth "
                   "and no --device: a custom device)")
    p.add_argument("--bandwidth", type=float, help="device memory bandwidth in GB/s")
    p.add_argument("--host", help=f"host RAM behind a GPU or 'none', default ddr5-desktop: {names(('host',))}")
    p.add_argument("--ram", type=float, help="host RAM in GiB (overrides the catalog)")
    p.add_argument("--ram-bandwidth", type=float, help="host RAM bandwidth in GB/s")
    p.add_argument("--disk", default="nvme-gen4", help=f"disk for experts that fit nowhere else or 'none', "
                   f"default nvme-gen4: {names(('disk',))}")
    p.add_argument("--disk-bandwidth", type=float, help="disk read bandwidth in GB/s")
    p.add_argument("--headroom", type=float, default=0.1, help="fraction of each memory kept free (default 0.1)")
    p.add_argument("--tp", type=int, default=1, metavar="N", help="N devices of the chosen kind, one model-parallel "
                   "rank each (dsv4.parallel's split): per-device bytes and fit, speed of the slowest rank plus the "
                   "collectives; each rank keeps its weights and the whole KV cache on its device (no offload, so "
                   "--host and --disk are unused; default 1)")
    p.add_argument("--interconnect", type=float, default=64.0, metavar="GB/s", help="with --tp: the bandwidth each "
                   "device sends at (default 64, PCIe 5.0 x16; NVLink 4 on H100/H200: 450)")
    p.add_argument("--link-latency", type=float, default=10.0, metavar="US", help="with --tp: the fixed cost of one "
                   "collective in microseconds (default 10); a step has an fp32 all-reduce after the embedding, each "
                   "layer's attention and MoE and each CSA indexer, and an all-gather of the logits")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    out.add_argument("--table", action="store_true", help="also print the recipe ladder and the device table")
    p.add_argument("--plot", metavar="PNG", help="write the tokens/s-per-recipe chart of every device here")
    p.set_defaults(func=run)


def build_system(args: argparse.Namespace) -> System:
    """The machine the arguments describe: device, host RAM (GPUs only), disk."""
    device = resolve(args.device, DEVICE_KINDS, args.vram, args.bandwidth) or resolve("rtx-4090", DEVICE_KINDS)
    host = None
    if args.host != "none" and (device.kind == "gpu" or args.host is not None):
        host = resolve(args.host or "ddr5-desktop", ("host",), args.ram, args.ram_bandwidth)
    disk = None if args.disk == "none" else resolve(args.disk, ("disk",), None, args.disk_bandwidth)
    return System(device, host, disk, args.headroom)


def run(args: argparse.Namespace) -> int:
    try:
        system, recipe = build_system(args), get_recipe(args.recipe)
        cfg = resolve_config(args.config)
        context = args.context if args.context is not None else min(4096, cfg.max_position_embeddings)
        workload = Workload(context, args.batch, args.kv_dtype)
        workload.check(cfg)  # before the seconds-long meta build
        link = check_parallel(args, cfg)
        facts = model_facts(cfg)
        plan = make_plan(facts, facts.weights(recipe), workload, system)
        if args.tp > 1:
            tp = make_tp_plan(plan, recipe, args.tp, link)
            report, text = tp_dict(tp), format_tp_plan(tp)
        else:
            report, text = plan_dict(plan), format_plan(plan)
        print(json.dumps({"config": args.config, **report}, indent=2) if args.json else f"config {args.config}\n{text}")
        if args.table or args.plot:
            print_tables(args, plan)
    except (PlanError, ConfigError, QuantError) as e:
        print(f"dsv4 plan: error: {e}", file=sys.stderr)
        return 2
    return 0


def check_parallel(args: argparse.Namespace, cfg: ModelConfig) -> Link:
    """The link of a --tp plan, once `cfg` is known to split into --tp ranks and no single-device table is asked."""
    check_tp(cfg, args.tp)
    if args.tp > 1 and (args.table or args.plot):
        raise PlanError(f"--table and --plot compare single devices; they do not combine with --tp {args.tp}")
    return Link(args.interconnect, args.link_latency)


def print_tables(args: argparse.Namespace, plan: Plan) -> None:
    """--table: the recipe ladder and the device table; --plot: the chart of every recipe on every device."""
    plans, skipped = recipe_plans(plan.facts, plan.workload, plan.system)
    systems = catalog_systems(plan.system.host, plan.system.disk, plan.system.headroom)
    if args.table:
        print(f"\n{format_ladder(plans, read_quality(), skipped)}\n")
        print(format_devices(device_plans(plan, systems)))
    if args.plot:
        title = f"{args.config}: decode at context {plan.workload.context:,}, batch {plan.workload.batch}"
        path = plot_speeds([p.weights.recipe for p in plans], speed_grid(plans, systems), title, args.plot)
        print(f"wrote {path}", file=sys.stderr)  # stdout stays one JSON object under --json
