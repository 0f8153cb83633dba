"""Data-parallel attention with expert-parallel MoE (`--parallel dp-ep`) over gloo on this CPU, 2 and 4 ranks
spawned by the test: each rank runs its own prompt (different lengths, whole or in chunks, then decode with MTP)
while its MoE layers trade tokens with the other ranks, and gets the one-rank model's logits (fp32, <= 1e-5) and the
tensor-parallel split's; the data-parallel engine (requests placed over the ranks, one rank idle with 4) gives the
one-rank engine's tokens, greedy and seeded, with and without speculative decoding, and a request cancelled while
it runs on another rank stops without disturbing the others; each rank holds only its experts."""

import pytest
import torch

from dsv4.engine import Engine, EngineConfig, SamplingParams
from dsv4.model.transformer import cast_model
from dsv4.parallel import Group, shard_experts, shard_model
from dsv4.parallel.data_parallel import DataParallelEngine, serve_rank
from dsv4.parallel.expert_parallel import ExpertParallel
from gloo_world import spawn_results
from test_parallel_tp import CONFIG, NO_EOS, PROMPTS, _engine_outputs, _model, _ranked_engine_tokens
from tiny_models import random_model

PER_RANK = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[0][:20]]  # rank r's own prompt


def _logits(model, prompt: list[int], chunk: int | None, decode: int = 12) -> torch.Tensor:
    """Logits (main and MTP) over `prompt` fed whole or in chunks, then `decode` greedy steps: [positions, 2, V]."""
    cache, out = model.make_cache(1), []
    ids = torch.tensor([prompt])
    step = chunk or ids.shape[1]
    for lo in range(0, ids.shape[1], step):
        part = ids[:, lo:lo + step]
        X = model.hidden_streams(part, cache)
        nxt = torch.cat([part[:, 1:], part[:, -1:]], dim=1)
        out.append(torch.stack([model.logits(X)[0], model.mtp_logits(X, nxt, cache)[0]], dim=1))
    for _ in range(decode):
        token = out[-1][-1:, 0].argmax(-1)[None]
        X = model.hidden_streams(token, cache)
        out.append(torch.stack([model.logits(X)[0], model.mtp_logits(X, token, cache)[0]], dim=1))
    return torch.cat(out)


def _with_cancel(engine: Engine) -> tuple[list[list[int]], int]:
    """The three test requests plus a long one cancelled after 6 steps: (the three outputs, the cancelled one's
    token count)."""
    seqs = [engine.add(p, SamplingParams(max_tokens=16, temperature=0)) for p in PROMPTS]
    long = engine.add(list(range(30, 70)), SamplingParams(max_tokens=200, temperature=0))  # placed on rank > 0
    got = {s.seq_id: [] for s in [long, *seqs]}
    steps = 0
    while engine.has_work():
        for e in engine.step():
            if e.token is not None:
                got[e.seq_id].append(e.token)
        steps += 1
        if steps == 6:
            assert engine.cancel(long.seq_id).finish_reason == "cancelled"
    return [got[s.seq_id] for s in seqs], len(got[long.seq_id])


def _worker(rank: int, world: int) -> dict:
    group, results = Group(rank, world), {}
    with torch.no_grad():
        full = _model()
        prompt = PER_RANK[rank]
        results["reference"] = {c: _logits(full, prompt, c) for c in (None, 13)}
        if rank == 0:
            for spec in (False, True):
                ref = Engine(full, EngineConfig(speculative=spec, prefill_chunk=16, eos_ids=NO_EOS))
                results[f"reference_tokens_{spec}"] = _engine_outputs(ref)
            results["reference_cancel"] = _with_cancel(Engine(_model(), EngineConfig(eos_ids=NO_EOS)))[0]
        tp = shard_model(_model(), group)
        every = [{c: _logits(tp, p, c) for c in (None, 13)} for p in PER_RANK[:world]]  # same input on all
        results["tp"] = every[rank]
        del tp
        model = shard_experts(full, group)
        results["ep"] = {}
        for c in (None, 13):  # ranks run different numbers of passes: each idles along until all are done
            results["ep"][c] = _logits(model, prompt, c)
            model.step_sync.drain()
        results.update(_ranked_engine_tokens(model, group, DataParallelEngine, serve_rank))
        if rank == 0:
            engine = DataParallelEngine(model, EngineConfig(eos_ids=NO_EOS), group)
            results["cancel"] = _with_cancel(engine)
            engine.close()
        else:
            serve_rank(Engine(model, EngineConfig(eos_ids=NO_EOS)), group)
        bf16 = [cast_model(_model(), torch.bfloat16) for _ in range(2)]
        bf16[1] = shard_experts(bf16[1], group)  # one rank's model, then this rank's part: bf16 bytes travel
        results["bf16"] = [_logits(m, prompt, None, decode=4) for m in bf16]
        bf16[1].step_sync.drain()
        experts = model.layers[0].ffn.experts
        results["experts"] = (type(experts).__name__, list(experts.owned),
                              sum(1 for e in experts if len(list(e.parameters()))))
    return results


@pytest.fixture(scope="module", params=[2, 4])
def ranks(request, tmp_path_factory):
    world, out = request.param, tmp_path_factory.mktemp(f"ep{request.param}")
    return world, spawn_results(_worker, world, out)


def test_each_rank_runs_its_own_prompt_with_the_one_rank_logits_and_the_tensor_parallel_ones(ranks):
    world, results = ranks
    for r in results:
        for chunk in (None, 13):
            assert (r["ep"][chunk] - r["reference"][chunk]).abs().max() <= 1e-5, (world, chunk)
            assert (r["ep"][chunk] - r["tp"][chunk]).abs().max() <= 1e-5, (world, chunk)  # the two modes agree
    assert {r["reference"][None].shape[0] for r in results} == {len(p) + 12 for p in PER_RANK[:world]}
    for r in results:  # bf16 (activations sent as bf16 bytes): equal here; allowed one bf16 step of the largest
        one, split = r["bf16"]
        assert (one.float() - split.float()).abs().max() <= 2.0**-8 * one.float().abs().max(), world


def test_data_parallel_engine_gives_one_rank_tokens_with_and_without_speculation(ranks):
    world, results = ranks
    for spec in (False, True):
        assert results[0][f"tokens_{spec}"] == results[0][f"reference_tokens_{spec}"], (world, spec)
    assert [len(t) for t in results[0]["tokens_False"]] == [32, 32, 20]


def test_a_request_cancelled_on_another_rank_stops_and_the_rest_are_unchanged(ranks):
    world, results = ranks
    outputs, cancelled = results[0]["cancel"]
    assert outputs == results[0]["reference_cancel"]
    assert 0 < cancelled < 200


def test_each_rank_holds_only_its_experts(ranks):
    world, results = ranks
    for rank, r in enumerate(results):
        kind, owned, resident = r["experts"]
        per = 8 // world
        assert (kind, owned, resident) == (ExpertParallel.__name__, list(range(rank * per, (rank + 1) * per)), per)


def test_dp_ep_needs_only_the_experts_to_divide():
    from dsv4.parallel import ParallelLayoutError, check_world

    cfg = random_model(seed=0, **{**CONFIG, "n_routed_experts": 6}).cfg  # heads 8, groups 4: no TP over 3 ranks
    check_world(cfg, 3, experts_only=True)
    with pytest.raises(ParallelLayoutError, match="not multiples of 3: num_attention_heads = 8"):
        check_world(cfg, 3)
    with pytest.raises(ParallelLayoutError, match="not multiples of 4: n_routed_experts = 6$"):
        check_world(cfg, 4, experts_only=True)
