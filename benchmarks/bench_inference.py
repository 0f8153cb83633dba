"""Inference speed of dsv4 vs `transformers` vs llama.cpp on the same random weights of a small-but-real V4 config,
and MTP speculative decoding on the bundled demo model.

Measures prefill tokens/s, time to first token, decode tokens/s at batch 1 and batch 8, and peak memory (RSS
growth over an idle process). Each framework runs in its own subprocess so peak memory is its own.
Each number is the best of 3 runs. Prints a Markdown table and writes JSON.

llama.cpp (`llama-cpp-python` 0.3.36, built from source: its vendored llama.cpp has the `deepseek4` architecture)
runs dsv4's own GGUF export of the same checkpoint, widened to F32 so that all three compute in fp32 on identical
weights (the checkpoint's values are bf16-representable, so the BF16 export loses nothing); an agreement row
compares its logits with dsv4's on the benchmark prompt. Without `llama_cpp` installed its row is skipped.
The config fits llama.cpp's loader: 4 mHC streams, compression ratios 0/4/128, an indexer head of 64.

The "large" part is the same comparison where the speed of quantized weights decides it: synthetic checkpoints of
Flash's architecture with the real 129,280-token vocabulary in the official format (FP4 experts, FP8 dense, BF16
head), written by the benchmark (streamed, kept in --large-dir): "large", hidden 2048, 8 layers, 32 routed experts
of 2048x2048 (top-6), ~4B parameters; "small", hidden 512, 8 layers, 16 experts. dsv4 loads it as stored (native
kernels, bf16 activations) and runs it eagerly and with its compiled decode step (warm-up reported); llama.cpp
reads its MXFP4 GGUF (`dsv4 convert --recipe MXFP4`: the same expert bytes, FP8 widened to BF16 as llama.cpp's own
converter does). All on every core. Each row also gives the bytes one decode token reads and the bound the
machine's read bandwidth (measured in the same run) puts on tok/s.

Speculative decoding needs a trained MTP module (random weights' drafts are never accepted), so its rows use the
bundled demo model on held-out thinking-mode task prompts: greedy decode tok/s at batch 1 and 8 with and without
`--speculative`, the share of drafts accepted, and whether the outputs are identical (they must be); each with the
eager and the compiled decode step (`--compile`; its warm-up is reported in the speed table). The "server" part
measures the same through the OpenAI server (the engine `dsv4 serve` builds, streamed over HTTP).

`--clock cpu` times with the process's CPU time instead of the wall clock: on a machine shared with other jobs
(where this process gets a small slice of each core) wall time measures the neighbours; with one thread, CPU time
is what the wall clock would show on an idle machine.

    python benchmarks/bench_inference.py [--prompt 256] [--decode 32] [--threads 2] [--clock wall|cpu]
                                         [--parts speed,profile,speculative,server,large] [--out bench_inference.json]
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import itertools
import json
import multiprocessing as mp
import platform
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

# Every V4 feature (sliding, CSA, HCA, hash + routed MoE, mHC) at a size a laptop CPU runs in seconds.
CONFIG = dict(vocab_size=32000, hidden_size=512, num_hidden_layers=4, compress_ratios=[0, 4, 128, 4],
              num_attention_heads=8, head_dim=64, qk_rope_head_dim=16, q_lora_rank=256, o_groups=2,
              o_lora_rank=128, sliding_window=128, n_routed_experts=16, num_experts_per_tok=2,
              moe_intermediate_size=256, num_hash_layers=1, hc_mult=4, index_n_heads=4, index_head_dim=64,
              index_topk=64, max_position_embeddings=4096,
              rope_scaling={"type": "yarn", "factor": 16, "original_max_position_embeddings": 256,
                            "beta_fast": 32, "beta_slow": 1})
BATCH = 8
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
GGUF = "model.f32.gguf"  # llama.cpp's copy of the checkpoint, inside the checkpoint directory
COMPILED = "dsv4 compiled"  # the engine with its compiled decode step (EngineConfig.compile)


def build_checkpoint(path: Path) -> None:
    """Random weights saved by `transformers` in fp32, every value rounded to bf16 first (so a BF16 GGUF export
    is exact and every framework runs the very same numbers)."""
    from transformers import DeepseekV4Config, DeepseekV4ForCausalLM

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DeepseekV4ForCausalLM(DeepseekV4Config(**CONFIG)).float()
        with torch.no_grad():
            for t in model.state_dict().values():
                if t.is_floating_point():
                    t.copy_(t.bfloat16())
        model.save_pretrained(path)


def have_llama_cpp() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def prompts(n: int, length: int) -> torch.Tensor:
    return torch.randint(2, CONFIG["vocab_size"], (n, length), generator=torch.Generator().manual_seed(1))


def timed(fn, clock=time.perf_counter) -> float:
    start = clock()
    fn()
    return clock() - start


def best(measure, repeats: int = 3) -> float:
    """The fastest of a few runs: the machine is shared, slower runs measure the neighbours."""
    return min(measure() for _ in range(repeats))


def dsv4_times(path: Path, length: int, new: int, clock, compile: bool = False) -> dict:
    """(ttft, decode seconds at batch 1, decode seconds at batch 8) with the dsv4 engine; with `compile`, the
    compiled decode step, warmed up first (its seconds reported as `warm_up`)."""
    from dsv4 import load_model
    from dsv4.engine import Engine, EngineConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no MTP weights": transformers does not save them
        model = load_model(path, dtype=torch.float32)
    engine = Engine(model, EngineConfig(prefill_chunk=length, prefix_cache_bytes=0, eos_ids=frozenset(),
                                        compile=compile))
    warm = engine.warm_up()
    return {**engine_times(engine, length, new, clock), "warm_up": warm}


def engine_times(engine, length: int, new: int, clock) -> dict:
    """(ttft, decode seconds at batch 1, decode seconds at batch 8) of greedy requests through `engine`."""
    from dsv4.engine import SamplingParams

    ids = prompts(BATCH, length).tolist()

    def run(rows: list[list[int]], tokens: int) -> tuple[float, float]:
        seqs = [engine.add(r, SamplingParams(temperature=0, max_tokens=tokens)) for r in rows]
        first = timed(lambda: [engine.step() for _ in iter(lambda: all(s.output for s in seqs), True)], clock)
        rest = timed(lambda: [engine.step() for _ in iter(lambda: not engine.has_work(), True)], clock)
        return first, rest

    run(ids[:1], 2)  # warm-up
    return {"ttft": best(lambda: run(ids[:1], 1)[0]), "decode_b1": best(lambda: run(ids[:1], new + 1)[1]),
            "decode_b8": best(lambda: run(ids, new + 1)[1])}


def hf_times(path: Path, length: int, new: int, clock) -> dict:
    from transformers import DeepseekV4ForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DeepseekV4ForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = prompts(BATCH, length)

    def gen(batch: torch.Tensor, tokens: int) -> float:
        kw = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)
        with torch.no_grad():
            return timed(lambda: model.generate(batch, **kw), clock)

    gen(ids[:1], 2)  # warm-up
    ttft, ttft8 = best(lambda: gen(ids[:1], 1)), best(lambda: gen(ids, 1))
    return {"ttft": ttft, "decode_b1": best(lambda: gen(ids[:1], new + 1)) - ttft,
            "decode_b8": best(lambda: gen(ids, new + 1)) - ttft8}


def rss_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(framework: str, path: str, length: int, new: int, threads: int, clock: str) -> dict:
    torch.set_num_threads(threads)
    import transformers  # noqa: F401  (same baseline for both frameworks)
    Path("/proc/self/clear_refs").write_text("5")  # restart the peak (VmHWM) from the idle process
    base = rss_kib("VmRSS")
    if framework == "llama.cpp":
        from llama_cpp_bench import llama_cpp_times

        times = llama_cpp_times(Path(path) / GGUF, prompts(BATCH, length).tolist(), new, threads,
                                functools.partial(timed, clock=CLOCKS[clock]), best)
    elif framework.startswith("dsv4"):
        times = dsv4_times(Path(path), length, new, CLOCKS[clock], compile=framework == COMPILED)
    else:
        times = hf_times(Path(path), length, new, CLOCKS[clock])
    peak = rss_kib("VmHWM") - base
    return {"framework": framework, "prefill_tok_s": length / times["ttft"], "ttft_ms": 1000 * times["ttft"],
            "decode_b1_tok_s": new / times["decode_b1"], "decode_b8_tok_s": BATCH * new / times["decode_b8"],
            "peak_mem_mib": peak / 1024, "warm_up_s": times.get("warm_up")}


def agreement(path: Path, length: int) -> dict:
    """dsv4's and llama.cpp's logits over the benchmark's first prompt: max |difference|, the logits' scale, and
    the share of positions whose greedy next token agrees."""
    from llama_cpp_bench import llama_cpp_logits

    from dsv4 import load_model

    row = prompts(1, length)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(path, dtype=torch.float32)
    with torch.no_grad():
        ours = model(row, model.make_cache(batch_size=1))[0]
    theirs = torch.from_numpy(llama_cpp_logits(path / GGUF, row[0].tolist()))
    return {"max_abs_diff": float((ours - theirs).abs().max()), "max_abs_logit": float(ours.abs().max()),
            "argmax_agree": float((ours.argmax(-1) == theirs.argmax(-1)).float().mean())}


def speculative_rows(new: int, threads: int, clock: str) -> list[dict]:
    """Greedy decoding of the demo model on held-out think prompts, plain and speculative, at batch 1 and 8, with
    the eager and the compiled decode step (warmed up first)."""
    from dsv4 import load_model
    from dsv4.chat import encode_messages_ids, load_tokenizer
    from dsv4.engine import Engine, EngineConfig, SamplingParams
    from dsv4.engine.model_path import default_model_path
    from dsv4.train.tasks import generate_tasks

    torch.set_num_threads(threads)
    tokenizer, model = load_tokenizer(), load_model(default_model_path())
    ids = [encode_messages_ids([{"role": "user", "content": t.question}], tokenizer=tokenizer, thinking=True)
           for t in generate_tasks(BATCH, seed=3, split="test")]
    rows, outputs = [], {}
    for compile, batch, speculative in itertools.product((False, True), (1, BATCH), (False, True)):
        engine = Engine(model, EngineConfig(prefix_cache_bytes=0, speculative=speculative, eos_ids=frozenset(),
                                            compile=compile))
        engine.warm_up()

        def run() -> float:
            seqs = [engine.add(p, SamplingParams(temperature=0, max_tokens=new + 1)) for p in ids[:batch]]
            while not all(s.output for s in seqs):
                engine.step()
            seconds = timed(lambda: [engine.step() for _ in iter(lambda: not engine.has_work(), True)],
                            CLOCKS[clock])
            outputs[speculative] = [list(s.output) for s in seqs]
            return seconds

        seconds = best(run)
        rows.append({"compiled": compile, "batch": batch, "speculative": speculative,
                     "decode_tok_s": batch * new / seconds,
                     "acceptance": engine.spec.acceptance_rate if engine.spec else None})
        if speculative:
            rows[-1]["same_output"] = outputs[True] == outputs[False]
    return rows


SORT_PROMPT = "Sort these numbers in ascending order: 42, 7, 19, 88, 3."


def server_rows(threads: int) -> list[dict]:
    """The demo model behind the OpenAI server (`dsv4 serve`'s engine, warm-up included), one streamed greedy
    thinking-mode answer to SORT_PROMPT per configuration: decode tok/s from the first streamed chunk to the last,
    eager and compiled, plain and speculative; and whether the texts agree."""
    import openai

    from dsv4 import load_model
    from dsv4.engine import EngineConfig
    from dsv4.engine.model_path import default_model_path
    from dsv4.server.run import BackgroundServer, make_state

    torch.set_num_threads(threads)
    model, rows, texts = load_model(default_model_path()), [], set()
    for compile, speculative in itertools.product((False, True), (False, True)):
        state = make_state(model, model_name="demo", config=EngineConfig(speculative=speculative, compile=compile),
                           warm_up=lambda engine: engine.warm_up(batch_sizes=(1,)))
        with BackgroundServer(state) as srv:
            client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)

            def answer() -> tuple[float, int, str]:
                stream = client.chat.completions.create(
                    model="demo", messages=[{"role": "user", "content": SORT_PROMPT}], max_tokens=200,
                    temperature=0, stream=True, stream_options={"include_usage": True},
                    extra_body={"thinking": {"type": "enabled"}})
                first = last = None
                pieces, usage = [], None
                for chunk in stream:
                    now = time.perf_counter()
                    if chunk.choices:
                        first, last = first or now, now
                        delta = chunk.choices[0].delta
                        pieces.append((getattr(delta, "reasoning_content", None) or "") + (delta.content or ""))
                    usage = chunk.usage or usage
                return last - first, usage.completion_tokens, "".join(pieces)

            answer()  # warm (first request)
            seconds, tokens, text = min(answer() for _ in range(3))
            texts.add(text)
            engine = state.loop.engine
            rows.append({"compiled": compile, "speculative": speculative, "tokens": tokens,
                         "decode_tok_s": (tokens - 1) / seconds,
                         "acceptance": engine.spec.acceptance_rate if engine.spec else None})
    for r in rows:
        r["same_text"] = len(texts) == 1
    return rows


def labelled(fn, name: str):
    """fn wrapped in a profiler range named `name` and the weight's shape (eager ctypes calls are invisible to
    torch.profiler; the compiled step calls them as the custom ops dsv4::matmul / dsv4::moe, which it sees)."""
    def call(*args):
        with torch.profiler.record_function(f"{name} {args[3]}x{args[4]}"):
            return fn(*args)
    return call


def profile_rows(path: Path, length: int, threads: int, steps: int = 50) -> list[dict]:
    """Where a batch-1 decode step of the benchmark model goes, eager and compiled: the step's wall time, then
    torch.profiler over `steps` engine steps (which slows eager's many small ops most), self time grouped into what
    the step does. ms per step."""
    from unittest import mock

    from torch.profiler import profile

    from dsv4 import kernels, load_model
    from dsv4.engine import Engine, EngineConfig, SamplingParams

    torch.set_num_threads(threads)
    kernels.set_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(path, dtype=torch.float32)
    rows = []
    for compile in (False, True):
        engine = Engine(model, EngineConfig(prefix_cache_bytes=0, eos_ids=frozenset(), compile=compile))
        engine.warm_up(batch_sizes=(1,))
        engine.add(prompts(1, length)[0].tolist(), SamplingParams(temperature=0, max_tokens=2 * steps + 20))
        for _ in range(10):
            engine.step()
        start = time.perf_counter()
        for _ in range(steps):
            engine.step()
        plain = (time.perf_counter() - start) / steps * 1000
        with profile(record_shapes=True) as prof, \
                mock.patch.object(kernels, "matmul", labelled(kernels.matmul, "dsv4::matmul")), \
                mock.patch.object(kernels, "moe", labelled(kernels.moe, "dsv4::moe")):
            start = time.perf_counter()
            for _ in range(steps):
                engine.step()
            total = (time.perf_counter() - start) / steps * 1000
        parts = {"head GEMV (32000x512 fp32)": 0.0, "other GEMVs": 0.0, "routed experts (fused op)": 0.0,
                 "guard checks": 0.0, "attention, compressors, indexer, mHC, norms (graph kernels or eager ops)": 0.0}
        for e in prof.key_averages(group_by_input_shape=True):
            ms = e.self_cpu_time_total / 1000 / steps
            matmul = e.key.startswith("dsv4::matmul") or e.key in ("aten::mm", "aten::addmm")
            if matmul and "32000" in e.key + str(e.input_shapes):
                parts["head GEMV (32000x512 fp32)"] += ms
            elif matmul:
                parts["other GEMVs"] += ms
            elif e.key.startswith("dsv4::moe"):
                parts["routed experts (fused op)"] += ms
            elif e.key == "TorchDynamo Cache Lookup":
                parts["guard checks"] += ms
            else:
                parts["attention, compressors, indexer, mHC, norms (graph kernels or eager ops)"] += ms
        measured = sum(parts.values())
        rows.append({"compiled": compile, "step_ms": total, **parts,
                     "engine and Python outside ops": max(total - measured, 0.0), "unprofiled_step_ms": plain})
    return rows


def profile_table(rows: list[dict]) -> str:
    keys = [k for k in rows[0] if k not in ("compiled", "step_ms", "unprofiled_step_ms")]
    head = "| share of a batch-1 decode step (ms) | " + " | ".join(
        "compiled" if r["compiled"] else "eager" for r in rows) + " |\n|---|" + "---:|" * len(rows)
    lines = [f"| {k} | " + " | ".join(f"{r[k]:.2f}" for r in rows) + " |" for k in keys]
    lines.append("| **whole step under the profiler** | " + " | ".join(f"**{r['step_ms']:.2f}**" for r in rows) + " |")
    lines.append("| whole step without the profiler | " + " | ".join(f"{r['unprofiled_step_ms']:.2f}" for r in rows) + " |")
    return "\n".join([head, *lines])


def accepted(r: dict) -> str:
    return "" if r["acceptance"] is None else f"{r['acceptance']:.0%}"


def server_table(rows: list[dict]) -> str:
    head = "| decode step | speculative | tokens | decode tok/s | drafts accepted |\n|---|---|---:|---:|---:|"
    lines = [f"| {'compiled' if r['compiled'] else 'eager'} | {'yes' if r['speculative'] else 'no'} | {r['tokens']} | "
             f"{r['decode_tok_s']:.1f} | {accepted(r)} |" for r in rows]
    same = "the same text" if rows and rows[0]["same_text"] else "DIFFERENT texts"
    return "\n".join([head, *lines, f"All four configurations streamed {same}."])


def speculative_table(rows: list[dict]) -> str:
    head = ("| decode step | batch | speculative | decode tok/s | drafts accepted | same output |\n"
            "|---|---:|---|---:|---:|---|")
    lines = []
    for r in rows:
        same = "" if "same_output" not in r else "yes" if r["same_output"] else "NO"
        lines.append(f"| {'compiled' if r['compiled'] else 'eager'} | {r['batch']} | "
                     f"{'yes' if r['speculative'] else 'no'} | {r['decode_tok_s']:.1f} | {accepted(r)} | {same} |")
    return "\n".join([head, *lines])


def warm(r: dict) -> str:
    return "" if r.get("warm_up_s") is None else f"{r['warm_up_s']:.1f}"


def table(rows: list[dict]) -> str:
    head = ("| framework | prefill tok/s | TTFT ms | decode tok/s (b=1) | decode tok/s (b=8) | peak MiB | warm-up s |\n"
            "|---|---:|---:|---:|---:|---:|---:|")
    lines = [f"| {r['framework']} | {r['prefill_tok_s']:.0f} | {r['ttft_ms']:.0f} | {r['decode_b1_tok_s']:.1f} | "
             f"{r['decode_b8_tok_s']:.1f} | {r['peak_mem_mib']:.0f} | {warm(r)} |" for r in rows]
    return "\n".join([head, *lines])


# Flash's architecture at ~4B parameters and at ~0.5B (every layer type, hash layers, mHC x4, the real vocabulary;
# what llama.cpp's loader accepts), in the official FP4/FP8 format.
_SYNTHETIC = dict(num_hidden_layers=8, compress_ratios=[0, 0, 4, 128, 4, 128, 4, 128], num_nextn_predict_layers=0,
                  max_position_embeddings=4096, original_max_position_embeddings=4096)
SIZES = {"large": dict(_SYNTHETIC, hidden_size=2048, num_attention_heads=32, n_routed_experts=32),
         "small": dict(_SYNTHETIC, hidden_size=512, num_attention_heads=8, n_routed_experts=16, q_lora_rank=512,
                       o_lora_rank=256, moe_intermediate_size=512)}
LARGE_GGUF = "llama.mxfp4.gguf"


def large_checkpoint(directory: Path, size: str) -> Path:
    """The synthetic checkpoint of SIZES[size] (official FP4 format) and its MXFP4 GGUF, unless already there."""
    from bench_offload import ensure_checkpoint

    from dsv4.config import ModelConfig
    from dsv4.weights.convert import convert_checkpoint

    cfg = ModelConfig(**{**ModelConfig.preset("flash").__dict__, **SIZES[size]})
    path = directory / f"{size}-fp4"
    seconds = ensure_checkpoint(path, cfg, seed=0)
    if seconds or not (path / LARGE_GGUF).exists():
        (path / LARGE_GGUF).unlink(missing_ok=True)
        convert_checkpoint(path, path / LARGE_GGUF, "MXFP4")
    return path


def dsv4_bytes_per_token(model) -> int:
    """Weight bytes one decode token reads: every tensor of the main layers but the routed experts and the
    embedding, plus k experts per layer and one embedding row (the MTP block does not run)."""
    from dsv4.model.moe import MoE
    from dsv4.offload.install import module_bytes

    moes = [m for m in model.layers.modules() if isinstance(m, MoE)]
    experts = sum(module_bytes(m.experts) for m in moes)
    routed = sum(m.gate.topk * module_bytes(m.experts[0]) for m in moes)
    return (module_bytes(model) - module_bytes(model.mtp) - experts - module_bytes(model.embed) + routed
            + module_bytes(model.embed) // model.cfg.vocab_size)


def gguf_bytes_per_token(path: Path, topk: int) -> int:
    """The same for a GGUF file: every tensor, expert tensors at topk of their experts, one token_embd row."""
    import gguf

    total = 0
    for t in gguf.GGUFReader(path).tensors:
        n = int(t.n_bytes)
        if "_exps." in t.name:
            n = n * topk // int(t.shape[-1])
        elif t.name == "token_embd.weight":
            n //= int(t.shape[-1])
        total += n
    return total


def large_child(framework: str, path: str, length: int, new: int, threads: int, clock: str) -> dict | None:
    """(Child process.) One framework on the large checkpoint: speeds, bytes per token, resident memory; None for
    the compiled step when it could not compile (the engine warned and would decode eagerly)."""
    from dsv4 import kernels

    torch.set_num_threads(threads)
    timer = functools.partial(timed, clock=CLOCKS[clock])
    if framework == "llama.cpp":
        from llama_cpp_bench import llama_cpp_times

        times = llama_cpp_times(Path(path) / LARGE_GGUF, prompts(BATCH, length).tolist(), new, threads, timer, best)
        per_token, matmuls = gguf_bytes_per_token(Path(path) / LARGE_GGUF, 6), "llama.cpp"
    else:
        from dsv4 import load_model
        from dsv4.engine import Engine, EngineConfig

        kernels.set_threads(threads)
        model = load_model(path, dtype=torch.bfloat16)
        per_token, matmuls = dsv4_bytes_per_token(model), kernels.describe()
        engine = Engine(model, EngineConfig(prefill_chunk=length, prefix_cache_bytes=0, eos_ids=frozenset(),
                                            compile=framework == COMPILED))
        warm_up_s = engine.warm_up() if framework == COMPILED else 0.0
        if framework == COMPILED and engine.runner.compiled is None:  # compiling failed (warned): no such row
            return None
        times = engine_times(engine, length, new, CLOCKS[clock])
    return {"framework": framework, "matmuls": matmuls, "prefill_tok_s": length / times["ttft"],
            "decode_b1_tok_s": new / times["decode_b1"], "decode_b8_tok_s": BATCH * new / times["decode_b8"],
            "bytes_per_token": per_token, "rss_mib": rss_kib("VmRSS") / 1024,
            "warm_up_s": None if framework == "llama.cpp" else warm_up_s}


def large_rows(directory: Path, size: str, length: int, new: int, threads: int, clock: str) -> dict:
    """Both frameworks on the synthetic checkpoint of SIZES[size], against the read bandwidth measured now."""
    from bench_kernels import read_bandwidth

    from dsv4 import kernels

    path = large_checkpoint(directory, size)
    kernels.set_threads(threads)
    bandwidth = read_bandwidth()
    rows = []
    for framework in ["dsv4", COMPILED] + (["llama.cpp"] if have_llama_cpp() else []):
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            row = pool.submit(large_child, framework, str(path), length, new, threads, clock).result()
        if row is None:
            continue
        row["bound_tok_s"] = bandwidth / row["bytes_per_token"]
        row["fraction_of_bound"] = row["decode_b1_tok_s"] / row["bound_tok_s"]
        rows.append(row)
    return {"config": SIZES[size], "read_bandwidth_bytes_per_s": bandwidth, "threads": threads, "rows": rows}


def large_table(large: dict) -> str:
    head = ("| framework | matmuls | prefill tok/s | decode tok/s (b=1) | decode tok/s (b=8) | GB read/token | "
            "bound tok/s | b=1 vs bound | warm-up s |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = [f"| {r['framework']} | {r['matmuls']} | {r['prefill_tok_s']:.1f} | {r['decode_b1_tok_s']:.2f} | "
             f"{r['decode_b8_tok_s']:.2f} | {r['bytes_per_token'] / 1e9:.3f} | {r['bound_tok_s']:.1f} | "
             f"{r['fraction_of_bound']:.0%} | {warm(r)} |"
             for r in large["rows"]]
    return "\n".join([head, *lines])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompt", type=int, default=256, help="prompt tokens")
    p.add_argument("--decode", type=int, default=32, help="tokens decoded per sequence")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steady numbers on a shared machine)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall: elapsed time; cpu: this process's CPU time (for a machine shared with other jobs)")
    p.add_argument("--parts", default="speed,speculative",
                   help="comma-separated: speed (dsv4 vs transformers vs llama.cpp), profile (speed, plus where a "
                        "decode step's time goes, eager and compiled), "
                        "speculative (MTP on the demo model), server (the demo model through the OpenAI server, "
                        "eager/compiled, plain/speculative), large (dsv4 vs llama.cpp on a ~4B official-format model)")
    p.add_argument("--large-dir", type=Path, default=Path("runs/bench"), help="where the large checkpoint is kept")
    p.add_argument("--large-threads", type=int, default=0, help="threads for the large part (default: all cores)")
    p.add_argument("--large-sizes", default="small,large", help="comma-separated: small (~0.5B), large (~4B)")
    p.add_argument("--out", default="bench_inference.json")
    args = p.parse_args()
    parts = set(args.parts.split(","))
    if not parts or parts - {"speed", "profile", "speculative", "server", "large"}:
        p.error(f"--parts takes speed, profile, speculative, server and/or large, found {args.parts!r}")
    if "profile" in parts:
        parts.add("speed")  # profiles the speed part's checkpoint
    out: dict = {"meta": {"config": CONFIG, "prompt": args.prompt, "decode": args.decode, "batch": BATCH,
                          "threads": args.threads, "clock": args.clock, "torch": torch.__version__,
                          "machine": platform.processor() or platform.machine()}}
    if "speed" in parts:
        frameworks = ["dsv4", COMPILED, "transformers"]
        with tempfile.TemporaryDirectory() as tmp:
            build_checkpoint(Path(tmp))
            if have_llama_cpp():
                from llama_cpp_bench import export_gguf_f32

                export_gguf_f32(Path(tmp), Path(tmp) / GGUF)
                frameworks.append("llama.cpp")
            else:
                print("llama_cpp is not installed: no llama.cpp row (pip install llama-cpp-python==0.3.36)")
            rows = []
            for framework in frameworks:  # a fresh process each: its own peak memory
                with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
                    rows.append(pool.submit(child, framework, tmp, args.prompt, args.decode, args.threads,
                                            args.clock).result())
            if "llama.cpp" in frameworks:
                out["llama_cpp_agreement"] = agreement(Path(tmp), args.prompt)
            if "profile" in parts:
                with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
                    out["profile"] = pool.submit(profile_rows, Path(tmp), args.prompt, args.threads).result()
        print(table(rows))
        out["results"] = rows
        if "profile" in out:
            print(profile_table(out["profile"]))
        if "llama_cpp_agreement" in out:
            a = out["llama_cpp_agreement"]
            print(f"llama.cpp vs dsv4 logits over the {args.prompt}-token prompt: max |diff| {a['max_abs_diff']:.2e} "
                  f"(logits up to {a['max_abs_logit']:.2f}), same greedy token at {a['argmax_agree']:.1%} of positions")
    if "speculative" in parts:
        out["speculative"] = speculative_rows(args.decode, args.threads, args.clock)
        print(speculative_table(out["speculative"]))
    if "server" in parts:
        out["server"] = server_rows(args.threads)
        print(server_table(out["server"]))
    if "large" in parts:
        from dsv4.kernels import default_threads

        out["large"] = {}
        for size in args.large_sizes.split(","):
            out["large"][size] = large_rows(args.large_dir, size, 128, 16, args.large_threads or default_threads(),
                                            args.clock)
            print(f"{size}: {SIZES[size]}\n{large_table(out['large'][size])}")
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
