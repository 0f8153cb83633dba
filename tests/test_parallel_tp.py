"""Tensor-parallel inference over gloo on this CPU, 2 and 4 ranks spawned by the test: the split model gives the
one-rank model's logits (fp32, <= 1e-5) for prefill, chunked prefill and decode across CSA/HCA block boundaries,
MTP included, on a config with every layer type and a hash layer; the engine in lockstep on every rank gives the
one-rank engine's tokens (greedy and seeded sampling, batched rows, chunked prefill, speculative decoding)."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dsv4.engine import Engine, EngineConfig, SamplingParams
from dsv4.parallel import Group, ParallelLayoutError, shard_model
from dsv4.parallel.lockstep import LockstepEngine, follow
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


def _engine_outputs(engine: Engine) -> list[list[int]]:
    params = [SamplingParams(max_tokens=32, temperature=0), SamplingParams(max_tokens=32, temperature=0.9, seed=4),
              SamplingParams(max_tokens=20, temperature=0.7, top_p=0.9, seed=8)]
    seqs = [engine.add(p, q) for p, q in zip(PROMPTS, params)]
    while engine.has_work():
        engine.step()
    return [s.output for s in seqs]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
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
            for spec in (False, True):
                config = EngineConfig(speculative=spec, prefill_chunk=16, eos_ids=NO_EOS)
                if rank == 0:
                    engine = LockstepEngine(model, config, group)
                    results[f"tokens_{spec}"] = _engine_outputs(engine)
                    engine.close()
                else:
                    follow(Engine(model, config), group)
            results["parameters"] = sum(p.numel() for p in model.parameters())
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=[2, 4])
def ranks(request, tmp_path_factory):
    world, out = request.param, tmp_path_factory.mktemp(f"tp{request.param}")
    mp.spawn(_worker, args=(world, _free_port(), str(out)), nprocs=world, join=True)
    return world, [torch.load(out / f"rank{r}.pt") for r in range(world)]


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
