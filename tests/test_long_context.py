"""Long contexts in bounded memory and the official-precision KV storage: prefill equals decode past 100K tokens
across every block boundary, the FP8/FP4 byte storage is lossless, the cache's bytes follow the formula for every
storage, and the engine refuses (or queues) requests whose cache would not fit its byte budget."""
import pytest
import torch

from dsv4.cache import expected_nbytes, select_rows
from dsv4.engine import Engine, EngineConfig, SamplingParams
from dsv4.engine.errors import CacheBudgetError
from dsv4.engine.generate import stream_tokens
from dsv4.engine.prefix_cache import PrefixCache
from dsv4.engine.prefix_store import PrefixStore, cache_tensors, model_identity
from dsv4.lowp import block_roundtrip, decode_e2m1, decode_e4m3, encode_e2m1, encode_e4m3
from dsv4.model.indexer import KEY_TILE
from dsv4.model.transformer import cast_model
from tiny_models import random_model
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)

# Every layer type at the official ratios (CSA 4, HCA 128), dims the QAT simulation accepts, a 1-head indexer.
LONG = dict(num_hidden_layers=3, compress_ratios=[0, 4, 128, 0], num_hash_layers=0, head_dim=72, index_head_dim=32,
            index_n_heads=1, index_topk=16, max_position_embeddings=1 << 20)


def _model(simulate: bool = True, seed: int = 0):
    return random_model("tiny-official-ratios", seed=seed, simulate_quant=simulate, **LONG)


def _feed(model, cache, ids, chunk: int) -> torch.Tensor:
    """Logits [1, S, V] of ids [1, S] fed in chunks of `chunk`."""
    with torch.no_grad():
        return torch.cat([model(ids[:, i:i + chunk], cache) for i in range(0, ids.shape[1], chunk)], dim=1)


def test_prefill_equals_decode_past_100k_tokens_across_block_boundaries():
    model = _model()
    n, tail = 110_000, 300                      # the tail crosses CSA (4), HCA (128) and window (32) boundaries
    ids = torch.randint(0, model.cfg.vocab_size, (1, n), generator=torch.Generator().manual_seed(1))
    cache = model.make_cache(1)
    with torch.no_grad():
        for i in range(0, n - tail, 8192):      # 27K indexer keys: several key tiles per query chunk
            model(ids[:, i:min(i + 8192, n - tail)], cache, last_only=True)
    assert (n - tail) // 4 > 3 * KEY_TILE
    other = select_rows(cache, [0])
    chunked = _feed(model, cache, ids[:, n - tail:], tail)
    stepped = _feed(model, other, ids[:, n - tail:], 1)
    # fp32 throughout: the two paths differ only in summation order (GEMM blocking over 300 vs 1 query), ~1e-6
    # relative on logits of magnitude ~1-10, and pick the same indexer entries (ties broken by index in both)
    assert (chunked - stepped).abs().max().item() <= 1e-4
    assert cache.nbytes() == other.nbytes() == expected_nbytes(model.cfg, n, kv_dtype="official")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_official_storage_gives_bitwise_the_logits_of_the_activation_dtype_cache(dtype):
    model = cast_model(_model(seed=2), dtype)
    plain = "float32" if dtype == torch.float32 else "bf16"
    ids = torch.randint(0, model.cfg.vocab_size, (1, 700), generator=torch.Generator().manual_seed(3))
    logits = {}
    for kv in (plain, "official"):
        cache = model.make_cache(1, kv_dtype=kv)
        logits[kv] = torch.cat([_feed(model, cache, ids[:, :650], 97), _feed(model, cache, ids[:, 650:], 1)], 1)
    assert torch.equal(logits[plain], logits["official"])


@pytest.mark.parametrize("kv", ["float32", "bf16", "official"])
def test_cache_bytes_follow_the_formula_for_every_storage(kv):
    model = _model(seed=4)
    cache, fed = model.make_cache(1, kv_dtype=kv), 0
    for target in (1, 4, 127, 128, 129, 1000, 5000):
        ids = torch.randint(0, model.cfg.vocab_size, (1, target - fed))
        with torch.no_grad():
            model(ids, cache, last_only=True)
        fed = target
        assert cache.nbytes() == expected_nbytes(model.cfg, fed, kv_dtype=kv), (kv, fed)
    if kv == "official":   # FP8 entries + exponents + fp32 RoPE dims, FP4 keys + exponents, vs 4 bytes a channel
        assert expected_nbytes(model.cfg, 1 << 20, kv_dtype=kv) < 0.4 * expected_nbytes(model.cfg, 1 << 20)


def test_byte_codecs_give_the_grid_values_back_exactly():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(7, 256, generator=g) * torch.logspace(-30, 30, 7)[:, None]
    x[0, :64] = 0.0
    x[1, :32] = -1e-40                               # signs of zeros and subnormal blocks survive
    for fmt, block, floor, enc, dec in (("e4m3", 64, 1e-4, encode_e4m3, decode_e4m3),
                                        ("e2m1", 32, 6 * 2.0 ** -126, encode_e2m1, decode_e2m1)):
        on_grid = block_roundtrip(x, block, fmt, floor)
        codes, exps = enc(on_grid, block, floor)
        assert codes.dtype == exps.dtype == torch.uint8 and exps.shape == (7, 256 // block)
        back = dec(codes, exps)
        assert torch.equal(back.view(torch.int32), on_grid.view(torch.int32)), fmt


def test_a_request_whose_cache_exceeds_the_budget_is_refused_and_others_wait_their_turn():
    model = random_model("tiny", seed=6)
    engine = Engine(model, EngineConfig(eos_ids=frozenset()))
    one = engine.cache_bytes_for(40 + 8)
    engine = Engine(model, EngineConfig(eos_ids=frozenset(), cache_bytes=one + one // 2, prefix_cache_bytes=0))
    with pytest.raises(CacheBudgetError, match=r"needs a KV cache of .* MiB, over the engine's cache budget"):
        engine.add(list(range(1, 41)), SamplingParams(max_tokens=500))
    first = engine.add(list(range(1, 41)), SamplingParams(max_tokens=8, temperature=0))
    second = engine.add(list(range(2, 42)), SamplingParams(max_tokens=8, temperature=0))
    engine.step()
    assert engine.scheduler.running == [first] and list(engine.scheduler.waiting) == [second]
    while engine.has_work():
        engine.step()
    assert len(first.output) == len(second.output) == 8 and engine.scheduler.reserved == 0


def test_official_storage_round_trips_through_the_prefix_store(tmp_path):
    model = _model(seed=7)
    tokens = torch.randint(1, model.cfg.vocab_size, (300,), generator=torch.Generator().manual_seed(8)).tolist()
    cache = model.make_cache(1)
    with torch.no_grad():
        model(torch.tensor([tokens[:270]]), cache)
    first = PrefixCache(64 << 20, disk=PrefixStore(tmp_path, 1 << 30, model_identity(model), 0, model.make_cache))
    first.store(tokens, cache)
    first.flush()
    restarted = PrefixCache(64 << 20, disk=PrefixStore(tmp_path, 1 << 30, model_identity(model), 0,
                                                       model.make_cache))
    loaded, want = restarted.lookup(tokens), cache_tensors(cache)
    got = cache_tensors(loaded)
    assert "layers.1.indexer.entries.codes" in got and got.keys() == want.keys()
    assert all(torch.equal(got[name], want[name]) for name in want)
    with torch.no_grad():
        assert torch.equal(model(torch.tensor([tokens[270:]]), loaded), model(torch.tensor([tokens[270:]]), cache))


def test_prefill_progress_is_reported_after_every_chunk_before_the_first_token():
    engine = Engine(random_model("tiny", seed=9), EngineConfig(prefill_chunk=8, eos_ids=frozenset(),
                                                               prefix_cache_bytes=0))
    seen = []
    seq = engine.add(list(range(1, 31)), SamplingParams(max_tokens=3, temperature=0))
    for event in stream_tokens(engine, seq, progress=lambda done, total: seen.append((done, total, len(seq.output)))):
        assert event.seq_id == seq.seq_id
    assert seen == [(8, 30, 0), (16, 30, 0), (24, 30, 0), (30, 30, 1)]
