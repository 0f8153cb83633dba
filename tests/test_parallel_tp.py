"""Tensor-parallel inference over gloo on this CPU, 2 and 4 ranks spawned by the test: the split model gives the
one-rank model's logits (fp32, <= 1e-5) for prefill, chunked prefill and decode across CSA/HCA block boundaries,
MTP included, on a config with every layer type and a hash layer; the engine in lockstep on every rank gives the
one-rank engine's tokens (greedy and seeded sampling, batched rows, chunked prefill, speculative decoding); each
rank loads only its part of a checkpoint, and holds what `dsv4 plan --tp` says; `dsv4 generate` under torchrun
prints what one process prints; a rank that dies ends the other with a clear error instead of a hang."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from dsv4.engine import Engine, EngineConfig, SamplingParams
from dsv4.parallel import Group, ParallelLayoutError, shard_model
from dsv4.parallel.lockstep import LockstepEngine, follow
from gloo_world import join_gloo, spawn_results
from server_process import free_port
from tiny_models import random_model

# every layer kind (sliding, CSA, HCA), a hash-routed MoE layer, one MTP block; heads, output groups, indexer
# heads, experts and vocabulary divide 4
CONFIG = dict(num_attention_heads=8, o_groups=4, index_n_heads=4, n_routed_experts=8, vocab_size=512)
PROMPT = [(7 * i + 3) % 512 for i in range(45)]  # decode then crosses CSA (4) and HCA (16) block ends
PROMPTS = [PROMPT, [5, 9, 2, 400, 33, 17, 8], list(range(100, 160))]
NO_EOS = frozenset()


def _model():
    return random_model(seed=11, **CONFIG)


def _logits(model, chunk: int | None, decode: int = 24) -> torch.Tensor:
    """Every position's logits over the prompt (fed whole or in chunks), then `decode` greedy steps, with the MTP
    logits of each call: [positions, 2, vocab]."""
    cache, out = model.make_cache(1), []
    ids = torch.tensor([PROMPT])
    for lo in range(0, ids.shape[1], chunk or ids.shape[1]):
        part = ids[:, lo:lo + (chunk or ids.shape[1])]
        X = model.hidden_streams(part, cache)
        nxt = torch.cat([part[:, 1:], part[:, -1:]], dim=1)  # MTP rows fed their next ids (the last: itself)
        out.append(torch.stack([model.logits(X)[0], model.mtp_logits(X, nxt, cache)[0]], dim=1))
    for _ in range(decode):
        token = out[-1][-1:, 0].argmax(-1)[None]
        X = model.hidden_streams(token, cache)
        out.append(torch.stack([model.logits(X)[0], model.mtp_logits(X, token, cache)[0]], dim=1))
    return torch.cat(out)


def _ranked_engine_tokens(model, group: Group, lead, follower) -> dict:
    """{"tokens_False"|"tokens_True": outputs} of `lead(model, config, group)` on rank 0, plain and speculative,
    while every other rank runs `follower(Engine(model, config), group)` (rank 0's dict only)."""
    results = {}
    for spec in (False, True):
        config = EngineConfig(speculative=spec, prefill_chunk=16, eos_ids=NO_EOS)
        if group.rank == 0:
            engine = lead(model, config, group)
            results[f"tokens_{spec}"] = _engine_outputs(engine)
            engine.close()
        else:
            follower(Engine(model, config), group)
    return results


def _engine_outputs(engine: Engine) -> list[list[int]]:
    params = [SamplingParams(max_tokens=32, temperature=0), SamplingParams(max_tokens=32, temperature=0.9, seed=4),
              SamplingParams(max_tokens=20, temperature=0.7, top_p=0.9, seed=8)]
    seqs = [engine.add(p, q) for p, q in zip(PROMPTS, params)]
    while engine.has_work():
        engine.step()
    return [s.output for s in seqs]


def _worker(rank: int, world: int) -> dict:
    group = Group(rank, world)
    full = _model()
    results = {}
    with torch.no_grad():
        if rank == 0:
            results["reference"] = {c: _logits(full, c) for c in (None, 13)}
            for spec in (False, True):
                ref = Engine(full, EngineConfig(speculative=spec, prefill_chunk=16, eos_ids=NO_EOS))
                results[f"reference_tokens_{spec}"] = _engine_outputs(ref)
        model = shard_model(full, group)
        results["split"] = {c: _logits(model, c) for c in (None, 13)}
        results.update(_ranked_engine_tokens(model, group, LockstepEngine, follow))
        results["parameters"] = sum(p.numel() for p in model.parameters())
    return results


@pytest.fixture(scope="module", params=[2, 4])
def ranks(request, tmp_path_factory):
    world, out = request.param, tmp_path_factory.mktemp(f"tp{request.param}")
    return world, spawn_results(_worker, world, out)


def test_split_logits_equal_one_rank_for_prefill_chunked_prefill_and_decode_with_mtp(ranks):
    world, results = ranks
    reference = results[0]["reference"]
    for chunk in (None, 13):
        for r in results:
            assert (r["split"][chunk] - reference[chunk]).abs().max() <= 1e-5, (world, chunk)
    assert reference[None].shape[0] == len(PROMPT) + 24


def test_lockstep_engine_gives_one_rank_tokens_with_and_without_speculation(ranks):
    world, results = ranks
    for spec in (False, True):
        assert results[0][f"tokens_{spec}"] == results[0][f"reference_tokens_{spec}"], (world, spec)
    assert results[0]["tokens_True"] == results[0]["tokens_False"]  # speculation changes nothing (greedy rows)
    assert [len(t) for t in results[0]["tokens_False"]] == [32, 32, 20]


def test_each_rank_holds_its_share_of_the_split_weights(ranks):
    world, results = ranks
    full = _model()
    total = sum(p.numel() for p in full.parameters())
    held = [r["parameters"] for r in results]
    assert len(set(held)) == 1 and held[0] < total
    # routed experts and the dim-split tensors are divided among ranks, everything else is on every rank
    split = sum(p.numel() for n, p in full.named_parameters()
                if ".experts." in n or n.split(".")[-2 if n.endswith("weight") else -1]
                in {"embed", "head", "wq_b", "wo_a", "wo_b", "weights_proj", "attn_sink"})
    assert sum(held) == (total - split) * world + split


def test_a_world_size_the_model_cannot_split_is_a_clear_error():
    with pytest.raises(ParallelLayoutError, match="not multiples of 3: num_attention_heads = 8, o_groups = 4"):
        shard_model(_model(), Group(0, 3))


# --- loading one rank's part --------------------------------------------------------------------------------------

# FP8 blocks of 128 split whole at 2 ranks: wq_b 8 heads x 96 = 768 rows, wo_a 2 groups x 128, wo_b 256 columns
FP8_DIMS = dict(hidden_size=128, q_lora_rank=128, num_attention_heads=8, head_dim=96, qk_rope_head_dim=32, o_groups=2,
                o_lora_rank=128, index_n_heads=4, index_head_dim=64, moe_intermediate_size=128, n_routed_experts=8)


def _load_worker(rank: int, world: int, paths: list[str]) -> dict:
    from dsv4.parallel.load import load_rank_model
    from dsv4.weights.loader import load_model

    group, results = Group(rank, world), {}
    with torch.no_grad():
        if rank == 0:
            results["reference"] = _logits(load_model(paths[0], dtype=torch.float32), 13, decode=8)
        for path in paths:
            model = load_rank_model(path, group, dtype=torch.float32)
            results[path] = _logits(model, 13, decode=8)
            results[f"{path} bytes"] = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        resident = load_rank_model(paths[0], group).state_dict()  # bf16, as `dsv4 plan` assumes
        results["resident"] = sum(t.numel() * t.element_size() for n, t in resident.items()
                                  if not n.startswith("mtp."))  # the plan leaves MTP out
    return results


def test_each_rank_loads_only_its_part_of_an_official_checkpoint_or_a_per_rank_one(tmp_path):
    """The official FP8/FP4 layout, read whole-checkpoint (positioned reads) and from `dsv4 convert
    --model-parallel 2`: both give the one-rank model's logits; each rank holds less than the whole model."""
    from dsv4.cli import main
    from dsv4.weights.writer import save_model

    official, per_rank = tmp_path / "official", tmp_path / "mp2"
    save_model(random_model(seed=3, **{**CONFIG, **FP8_DIMS}), official, "FP4")
    assert main(["convert", str(official), str(per_rank), "--model-parallel", "2"]) == 0
    paths = [str(official), str(per_rank)]
    results = spawn_results(_load_worker, 2, tmp_path, paths)
    reference = results[0]["reference"]
    for r in results:
        for path in paths:
            assert (r[path] - reference).abs().max() <= 1e-4 * reference.abs().max(), path
    whole = sum(f.stat().st_size for f in official.glob("*.safetensors"))
    assert all(r[f"{paths[0]} bytes"] < 0.75 * whole for r in results)
    # each rank's resident weights are what `dsv4 plan --tp 2` says a device holds
    plan = subprocess.run([sys.executable, "-m", "dsv4.cli", "plan", str(official / "config.json"), "--recipe", "FP4",
                           "--tp", "2", "--json"], capture_output=True, text=True, check=True)
    per_device = json.loads(plan.stdout)["per_device"]
    for rank, r in enumerate(results):
        assert abs(r["resident"] / per_device[rank]["memory_weight_bytes"] - 1) <= 0.05, (r["resident"], per_device)


# --- the command line under torchrun ------------------------------------------------------------------------------

def test_dsv4_generate_under_torchrun_answers_as_one_process(tmp_path):
    """`torchrun --nproc-per-node 2 -m dsv4.cli generate` on the demo model (converted to BF16, which splits in 2)
    prints what one process prints, and every rank exits."""
    from dsv4.cli import main
    from dsv4.engine.model_path import DEMO_MODEL_DIR

    bf16 = tmp_path / "demo-bf16"
    assert main(["convert", str(DEMO_MODEL_DIR), str(bf16), "--recipe", "BF16"]) == 0
    command = ["-m", "dsv4.cli", "generate", "What is 58 + 27?", "--model", str(bf16), "--temperature", "0",
               "--max-tokens", "60", "--no-thinking"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=300, env=env)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          f"--master-port={free_port()}", *command], capture_output=True, text=True, timeout=300,
                         env=env)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    assert two.stdout == one.stdout and one.stdout.strip()


# --- faults -------------------------------------------------------------------------------------------------------

def _fault_worker(rank: int, world: int, port: int, out_dir: str, dies: int) -> None:
    """Rank `dies` exits abruptly after its third engine step; the survivor records what it saw and how fast."""
    import time

    from dsv4.parallel.lockstep import RankLostError

    join_gloo(rank, world, port)
    model = shard_model(_model(), Group(rank, world))
    config = EngineConfig(prefill_chunk=16, eos_ids=NO_EOS)
    engine = LockstepEngine(model, config, Group(rank, world)) if rank == 0 else Engine(model, config)
    if rank == dies:
        real, steps = engine.step, []

        def step():
            steps.append(1)
            if len(steps) > 3:
                os._exit(3)
            return real()
        engine.step = step
    start, error = time.monotonic(), None
    try:
        if rank == 0:
            _engine_outputs(engine)
        else:
            follow(engine, Group(rank, world))
    except RankLostError as e:
        error = str(e)
    torch.save({"error": error, "seconds": time.monotonic() - start}, os.path.join(out_dir, f"rank{rank}.pt"))
    os._exit(0)


@pytest.mark.parametrize("dies", [0, 1])
def test_a_rank_that_dies_mid_generation_ends_the_other_with_a_clear_error(tmp_path, dies):
    ctx = mp.start_processes(_fault_worker, args=(2, free_port(), str(tmp_path), dies), nprocs=2, join=False,
                             start_method="spawn")
    for p in ctx.processes:
        p.join(timeout=120)
        assert not p.is_alive()
    survivor = torch.load(tmp_path / f"rank{1 - dies}.pt")
    assert survivor["error"] and "a model-parallel step failed" in survivor["error"], survivor
    assert survivor["seconds"] < 60


def test_loading_a_per_rank_checkpoint_in_one_process_says_how_to_run_it(tmp_path):
    from dsv4.cli import main
    from dsv4.weights.checkpoint import CheckpointError
    from dsv4.weights.loader import load_model
    from dsv4.weights.writer import save_model

    save_model(_model(), tmp_path / "full", "BF16")
    assert main(["convert", str(tmp_path / "full"), str(tmp_path / "mp2"), "--model-parallel", "2"]) == 0
    with pytest.raises(CheckpointError, match="per-rank checkpoint for 2 model-parallel ranks.*--nproc-per-node 2"):
        load_model(tmp_path / "mp2")


@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_left_alone_at_the_rendezvous_exits_with_a_clear_error(rank):
    """Rank 0 started without rank 1 waits for it; rank 1 without rank 0 cannot reach the address: both give up
    after DSV4_JOIN_TIMEOUT with a message saying what to check, instead of waiting for the 30-day step timeout."""
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "DSV4_JOIN_TIMEOUT": "2"}
    proc = subprocess.run([sys.executable, "-m", "dsv4.cli", "generate", "hi", "--max-tokens", "2"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert f"rank {rank} of 2: the ranks did not all meet at 127.0.0.1:" in proc.stderr
    assert "DSV4_JOIN_TIMEOUT" in proc.stderr
