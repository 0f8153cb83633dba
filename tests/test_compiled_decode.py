"""The compiled decode step (dsv4/engine/compiled.py) computes what the eager model computes, and steady-state
decoding never recompiles it.

The reference is the eager forward of the same model on a copy of the same cache: fp32 logits within 1e-4 and
the same greedy tokens, for rows at different positions crossing CSA (4) and HCA (16) block boundaries, one and
two tokens per row (decode and speculative verification), with MTP drafts; then whole engines, compiled against
eager, with speculation and prefix reuse. The model is the tiny config cut to one CSA and one HCA layer plus the
MTP layer (fewer graphs to compile), its linears and experts on the native kernels as `load_model` sets them up.
"""
import pytest
import torch

from dsv4.cache import select_rows, stack_caches
from dsv4.engine import Engine, EngineConfig, SamplingParams
from dsv4.engine.compiled import CompiledStep, compile_count
from dsv4.quant.experts import fuse_experts
from dsv4.quant.linear import NATIVE_MAX_ROWS, native_float_linears
from tiny_models import random_model
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)

NO_EOS = frozenset()
PROMPTS = [[3, 17, 99, 4, 250, 31, 8, 77, 402, 5, 6, 19, 300, 2], [9, 8, 7], [40 + i for i in range(29)]]


@pytest.fixture(scope="module")
def model():
    m = random_model(seed=5, num_hidden_layers=2, compress_ratios=[4, 16, 0])
    return native_float_linears(fuse_experts(m))


def prefilled(model, prompts):
    """A batch cache whose rows hold `prompts` (different lengths, so different positions)."""
    caches = []
    for p in prompts:
        cache = model.make_cache(1)
        with torch.no_grad():
            model(torch.tensor([p]), cache)
        caches.append(cache)
    return stack_caches(caches)


@pytest.mark.parametrize("rows,tokens", [(1, 1), (3, 1), (1, 2), (3, 2)])
def test_compiled_step_equals_eager(model, rows, tokens):
    steps_equal_eager(model, rows, tokens)


def test_compiled_step_equals_eager_on_official_kv_entries():
    """simulate_quant (what official checkpoints load with): FP8 main entries with ue8m0 exponent bytes and FP4
    indexer keys in the cache, written inside the graph."""
    model = random_model(seed=6, num_hidden_layers=1, compress_ratios=[4, 0], simulate_quant=True, head_dim=72,
                         index_head_dim=32)
    assert model.make_cache(1).layers[0].compressor.fmt.kind == "fp8"
    steps_equal_eager(native_float_linears(fuse_experts(model)), rows=1, tokens=1)


def steps_equal_eager(model, rows: int, tokens: int) -> None:
    step = CompiledStep(model)
    # warmed shape kinds run with dynamo's differentiating guards only
    step.warm_up(speculative=tokens == 2, batch_sizes=(1,) if rows == 1 else (1, 2))
    compiled = prefilled(model, PROMPTS[:rows])
    eager = select_rows(compiled, list(range(rows)))
    ids = torch.tensor([[5 + t for t in range(tokens)]] * rows)
    for _ in range(40 // tokens):  # positions 3..45: every row crosses CSA and HCA window ends
        X, got = step.forward(ids, compiled)
        with torch.no_grad():
            X_ref = model.hidden_streams(ids, eager)
            want = model.logits(X_ref)
        assert torch.equal(compiled.pos, eager.pos)
        assert (got - want).abs().max() <= 1e-4
        assert torch.equal(got.argmax(-1), want.argmax(-1))
        if tokens == 2:  # speculative steps also draft with the MTP module
            nxt = want.argmax(-1)
            draft = step.draft(X, nxt, compiled)
            with torch.no_grad():
                assert torch.equal(draft, model.mtp_logits(X_ref, nxt, eager)[:, -1].argmax(-1))
        ids = want.argmax(-1)


def test_speculative_drafts_of_a_wide_batch_reuse_the_warm_graphs(model):
    """A batch whose verification rows fit the native kernels' row bound while the MTP draft's h_proj rows (hc_mult
    per token) do not: it must run on the warmed batch graphs (it used to need a new graph, which the warmed-step
    stance refuses: the engine raised on the first speculative step at batch 8 of the demo model)."""
    step = CompiledStep(model)
    step.warm_up(speculative=True, batch_sizes=(1, 2))
    warm = compile_count()
    rows = NATIVE_MAX_ROWS // 2  # 2 tokens per row: within the bound; times hc_mult streams: past it
    assert rows * 2 * model.cfg.hc_mult > NATIVE_MAX_ROWS
    prompts = [PROMPTS[i % 3][: 3 + i] for i in range(rows)]
    compiled = prefilled(model, prompts)
    eager = select_rows(compiled, list(range(rows)))
    ids = torch.tensor([[5, 6]] * rows)
    X, _ = step.forward(ids, compiled)
    draft = step.draft(X, ids, compiled)
    with torch.no_grad():
        X_ref = model.hidden_streams(ids, eager)
        assert torch.equal(draft, model.mtp_logits(X_ref, ids, eager)[:, -1].argmax(-1))
    assert compile_count() == warm


def run(model, compile: bool, speculative: bool, params: SamplingParams, prefix: bool = False):
    """Outputs of PROMPTS through one engine; with `prefix`, a second turn that extends the first prompt and its
    answer (served from the prefix cache)."""
    engine = Engine(model, EngineConfig(compile=compile, speculative=speculative, prefill_chunk=8, eos_ids=NO_EOS,
                                        prefix_cache_bytes=(64 << 20) if prefix else 0))
    if compile:
        engine.warm_up()
    seqs = [engine.add(p, params) for p in PROMPTS]
    while engine.has_work():
        engine.step()
    outputs = [s.output for s in seqs]
    if prefix:
        turn = engine.add(PROMPTS[0] + outputs[0] + [11, 12], params)
        while engine.has_work():
            engine.step()
        assert turn.cached_prompt > len(PROMPTS[0])  # the second turn reused the first's cache
        outputs.append(turn.output)
    return outputs


@pytest.mark.parametrize("params", [SamplingParams(temperature=0, max_tokens=24),
                                    SamplingParams(seed=11, top_k=40, max_tokens=24)], ids=["greedy", "seeded"])
@pytest.mark.parametrize("speculative", [False, True], ids=["plain", "speculative"])
def test_compiled_engine_equals_eager(model, params, speculative):
    eager = run(model, compile=False, speculative=False, params=params, prefix=True)
    assert run(model, compile=True, speculative=speculative, params=params, prefix=True) == eager


def test_no_recompiles_in_steady_state(model, monkeypatch):
    """200 steps of two engines (plain and speculative) after warm-up, with rows joining at different
    positions, leaving (different lengths, a cancellation) and entry storage growing: no new graph."""
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)  # no silent eager fallback
    engines = [Engine(model, EngineConfig(compile=True, speculative=spec, prefill_chunk=8, eos_ids=NO_EOS))
               for spec in (False, True)]
    for engine in engines:
        engine.warm_up()
    warm = compile_count()
    assert warm > 0
    steps = longest = 0
    for k in range(20):  # a new request every 10 steps, on alternating engines
        engine = engines[k % 2]
        seq = engine.add(PROMPTS[k % 3][: 2 + k], SamplingParams(temperature=0, max_tokens=30 + 20 * (k % 4)))
        if k == 7:
            engine.step()
            engine.cancel(seq.seq_id)
        for _ in range(10):
            for e in engines:
                e.step()
                if e.batch.cache is not None:
                    longest = max(longest, int(e.batch.cache.pos.max()))
            steps += 1
    assert steps == 200 and longest > 64  # past the first entry-storage growth of the CSA layer (16 entries)
    assert compile_count() == warm


def test_a_warmed_step_missing_its_graph_compiles_it_instead_of_failing(model):
    """If a warmed shape kind meets a graph it lacks (here: dynamo's graphs dropped after warm-up), the step warns,
    compiles it with every guard checked and returns what the eager model does. Last in this file: it resets
    dynamo."""
    step = CompiledStep(model)
    step.warm_up(speculative=False, batch_sizes=(1,))
    compiled = prefilled(model, PROMPTS[:1])
    eager = select_rows(compiled, [0])
    torch._dynamo.reset()
    ids = torch.tensor([[5]])
    with pytest.warns(UserWarning, match="warm-up did not compile"):
        _, got = step.forward(ids, compiled)
    with torch.no_grad():
        want = model.logits(model.hidden_streams(ids, eager))
    assert (got - want).abs().max() <= 1e-4 and torch.equal(compiled.pos, eager.pos)
