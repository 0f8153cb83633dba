"""The prefix cache's tiers: a segmented LRU in memory that protects often-reused prefixes, and safetensors files
on disk that survive restarts, are written atomically, stay under a byte budget and are ignored (with a warning,
never a crash) when truncated, corrupted or written for another model."""
import argparse
import os
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dsv4.engine import Engine, EngineConfig, SamplingParams
from dsv4.engine import prefix_store
from dsv4.engine.prefix_cache import PrefixCache, SegmentedLRU
from dsv4.engine.options import add_model_args, prefix_cache_config
from dsv4.engine.prefix_store import PrefixStore, cache_tensors, model_identity
from dsv4.quant.experts import fuse_experts
from dsv4.quant.linear import native_float_linears
from dsv4.server.metrics import Metrics
from tiny_models import random_model
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)

NO_EOS = frozenset()
GREEDY = SamplingParams(temperature=0, max_tokens=6)
PROMPT = [3, 17, 99, 4, 250, 31, 8, 77, 402, 5, 6, 19, 300, 2, 45, 61, 7, 12, 90, 33]


@pytest.fixture(scope="module")
def model():
    return random_model(seed=5)


def engine(model, directory=None, speculative=False, cache=True, **config) -> Engine:
    config = {"prefix_cache_bytes": (64 << 20) if cache else 0, **config}
    return Engine(model, EngineConfig(speculative=speculative, prefill_chunk=8, eos_ids=NO_EOS,
                                      prefix_cache_dir=None if directory is None else str(directory), **config))


def generate(e: Engine, prompt: list[int], params: SamplingParams = GREEDY):
    """(output tokens, logits [n, V] of every sampled token) of one request."""
    seq = e.add(prompt, params)
    logits, real = [], e._choose

    def choose(s, row):
        if s is seq:
            logits.append(row.clone())
        return real(s, row)

    e._choose = choose
    if e.spec is not None:
        e.spec.choose = choose
    while e.has_work():
        e.step()
    e._choose = real
    if e.prefix is not None:
        e.prefix.flush()
    return seq.output, torch.stack(logits)


def without_disk(model, prompt: list[int], first: list[int] | None = None):
    """(output, logits) of `prompt` from an engine without a disk tier, after running `first` (memory hit) or not
    (miss): the same prefill chunks as a disk hit or miss, so the logits must be equal bit for bit. Without any
    prefix cache the chunks differ (the prompt is not cut before its last token), so only rounding differs."""
    e = engine(model)
    if first is not None:
        generate(e, first)
    out, logits = generate(e, prompt)
    plain_out, plain_logits = generate(engine(model, cache=False), prompt)
    assert out == plain_out and torch.allclose(logits, plain_logits, rtol=0, atol=1e-6)
    return out, logits


def cache_of(model, tokens: list[int]):
    """A batch-1 cache after feeding `tokens`."""
    cache = model.make_cache(1)
    with torch.no_grad():
        model(torch.tensor([tokens]), cache)
    return cache


def assert_same_cache(a, b):
    ta, tb = cache_tensors(a), cache_tensors(b)
    assert ta.keys() == tb.keys() and torch.equal(a.pos, b.pos)
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name


def store_in(model, directory, **kw) -> PrefixStore:
    return PrefixStore(directory, kw.pop("max_bytes", 1 << 30), kw.pop("identity", model_identity(model)),
                       kw.pop("lookahead", 0), model.make_cache)


def cache_files(directory) -> list[Path]:
    return sorted(Path(directory).glob("*.safetensors"))


# ---- memory tier ----

def test_the_segmented_lru_evicts_one_off_keys_before_a_protected_one():
    lru = SegmentedLRU(100, protected_fraction=0.6, promote=2)
    assert lru.add("system", 30) == []
    lru.touch("system")
    lru.touch("system")  # hit twice: protected
    evicted = [k for i in range(10) for k in lru.add(f"once{i}", 30)]
    assert "system" in lru and "system" not in evicted and lru.nbytes <= 100
    assert evicted == [f"once{i}" for i in range(8)]


def test_a_often_reused_prefix_survives_a_burst_of_one_off_prompts_in_memory(model):
    shared = cache_of(model, PROMPT[:8])
    prefix = PrefixCache(int(shared.nbytes() * 3.5))
    prefix.store(PROMPT[:8], shared)
    for _ in range(2):
        assert prefix.lookup(PROMPT[:8] + [1]) is not None
    for i in range(6):
        prefix.store([400 + i] + PROMPT[1:8], cache_of(model, [400 + i] + PROMPT[1:8]))
    assert prefix.lookup(PROMPT[:8] + [1]) is not None
    assert prefix.lookup([400] + PROMPT[1:8] + [1]) is None  # the oldest one-off prompt was evicted
    assert prefix.nbytes <= prefix.max_bytes


# ---- disk tier ----

def test_a_stored_cache_comes_back_equal_after_a_restart(model, tmp_path):
    cache = cache_of(model, PROMPT[:13])
    first = PrefixCache(64 << 20, disk=store_in(model, tmp_path))
    first.store(PROMPT, cache)
    first.flush()
    assert len(cache_files(tmp_path)) == 1
    restarted = PrefixCache(64 << 20, disk=store_in(model, tmp_path))
    loaded = restarted.lookup(PROMPT)
    assert_same_cache(loaded, cache)
    assert restarted.stats().disk_hits == 1 and len(restarted) == 1  # now in memory too
    with safe_open(cache_files(tmp_path)[0], "pt") as f:
        meta = f.metadata()
    assert meta["tokens"] == "13" and meta["version"] == "1" and meta["model"] == model_identity(model)


def test_a_restarted_engine_continues_from_disk_exactly_like_no_cache(model, tmp_path):
    first_out, _ = generate(engine(model, tmp_path), PROMPT)
    follow_up = PROMPT + first_out + [21, 22]
    restarted = engine(model, tmp_path)
    out, logits = generate(restarted, follow_up)
    ref_out, ref_logits = without_disk(model, follow_up, first=PROMPT)
    assert out == ref_out and torch.equal(logits, ref_logits)
    stats = restarted.prefix_stats()
    cached = len(PROMPT) + len(first_out) - 1  # everything the first run fed
    assert stats.hits == 1 and stats.disk_hits == 1 and stats.misses == 0
    assert stats.cached_tokens == cached and stats.prefilled_tokens == len(follow_up) - cached


def test_with_no_memory_tier_the_disk_alone_serves_prefixes(model, tmp_path):
    e = engine(model, tmp_path, prefix_cache_bytes=0)
    first_out, _ = generate(e, PROMPT)
    out, _ = generate(e, PROMPT + first_out + [21])
    stats = e.prefix_stats()
    assert stats.disk_hits == 1 and stats.memory_entries == 0 and stats.disk_entries == 4
    assert out == without_disk(model, PROMPT + first_out + [21], first=PROMPT)[0]


def test_speculative_decoding_continues_from_disk_like_plain_decoding(model, tmp_path):
    first_out, _ = generate(engine(model, tmp_path, speculative=True), PROMPT)
    follow_up = PROMPT + first_out + [21, 22]
    restarted = engine(model, tmp_path, speculative=True)
    out, _ = generate(restarted, follow_up)
    assert out == generate(engine(model, cache=False), follow_up)[0]
    assert restarted.prefix_stats().disk_hits == 1 and restarted.prefix_stats().cached_tokens > len(PROMPT)


def test_compiled_layout_caches_load_with_the_layout_the_engine_expects(model, tmp_path):
    """A cache after `reserve` holds spare entry capacity: only the used entries go to disk and come back."""
    cache = cache_of(model, PROMPT[:13])
    cache.reserve(64)
    store = store_in(model, tmp_path)
    store.put(tuple(PROMPT[:13]), cache)
    store.flush()
    loaded = store_in(model, tmp_path).load(tuple(PROMPT[:13]))
    assert_same_cache(loaded, cache)
    assert int(loaded.pos[0]) == 13 and loaded.pos.dtype == torch.long


def test_a_compiled_speculative_engine_continues_from_disk_like_eager_decoding(tmp_path):
    """Compiled decode marks entry capacities dynamic: a cache loaded from disk (capacity = what it uses, or 0)
    must decode through the same graphs as one grown in memory."""
    small = native_float_linears(fuse_experts(random_model(seed=5, num_hidden_layers=2, compress_ratios=[4, 16, 0])))
    params = SamplingParams(temperature=0, max_tokens=12)
    first_out, _ = generate(engine(small, tmp_path, speculative=True, compile=True), PROMPT, params)
    follow_up = PROMPT + first_out + [21, 22]
    restarted = engine(small, tmp_path, speculative=True, compile=True)
    out, _ = generate(restarted, follow_up, params)
    assert out == generate(engine(small, cache=False), follow_up, params)[0]
    assert restarted.prefix_stats().disk_hits == 1


def corrupt_truncated(path: Path, model, tmp_path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def corrupt_garbage(path: Path, model, tmp_path):
    path.write_bytes(os.urandom(path.stat().st_size))


def corrupt_other_model(path: Path, model, tmp_path):
    """The same file as another model's engine would write it (its identity in the metadata and the name)."""
    other = store_in(random_model(seed=6), tmp_path / "other")
    with safe_open(path, "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    path.unlink()
    save_file(tensors, tmp_path / other.file_name((int(meta["tokens"]), meta["sha256"])),
              metadata={**meta, "model": other.identity})


def corrupt_tokens(path: Path, model, tmp_path):
    with safe_open(path, "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    tensors["tokens"][3] += 1
    save_file(tensors, path, metadata=meta)


def corrupt_version(path: Path, model, tmp_path):
    with safe_open(path, "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    save_file(tensors, path, metadata={**meta, "version": "2"})


@pytest.mark.parametrize("corrupt", [corrupt_truncated, corrupt_garbage, corrupt_other_model, corrupt_tokens,
                                     corrupt_version],
                         ids=["truncated", "garbage", "other-model", "tokens-not-matching-hash", "other-version"])
def test_a_bad_cache_file_is_a_warned_miss_with_the_same_output(model, tmp_path, corrupt):
    first_out, _ = generate(engine(model, tmp_path), PROMPT)
    follow_up = PROMPT + first_out + [21, 22]
    for path in cache_files(tmp_path):
        corrupt(path, model, tmp_path)
    with pytest.warns(RuntimeWarning, match="prefix cache: ignoring"):
        restarted = engine(model, tmp_path)
        out, logits = generate(restarted, follow_up)
    ref_out, ref_logits = without_disk(model, follow_up)
    assert out == ref_out and torch.equal(logits, ref_logits)
    stats = restarted.prefix_stats()
    assert stats.disk_hits == 0 and stats.misses == 1 and stats.cached_tokens == 0 and stats.disk_rejected >= 1


def test_the_disk_budget_holds_and_a_protected_prefix_survives_a_burst(model, tmp_path):
    shared = cache_of(model, PROMPT[:8])
    size = len(safe_file_bytes(model, tmp_path / "probe", shared, PROMPT[:8]))
    store = store_in(model, tmp_path, max_bytes=int(size * 3.5))
    store.put(tuple(PROMPT[:8]), shared)
    store.flush()
    store.touch(tuple(PROMPT[:8]))
    store.touch(tuple(PROMPT[:8]))  # hit twice: protected
    for i in range(6):
        one_off = [400 + i] + PROMPT[1:8]
        store.put(tuple(one_off), cache_of(model, one_off))
        store.flush()
        assert sum(p.stat().st_size for p in cache_files(tmp_path)) <= store.max_bytes
    restarted = store_in(model, tmp_path, max_bytes=int(size * 3.5))
    assert restarted.longest(PROMPT) == tuple(PROMPT[:8]) and restarted.hits(tuple(PROMPT[:8])) == 2
    assert restarted.longest([400] + PROMPT[1:9]) is None  # the oldest one-off prompt was evicted
    assert len(restarted) == 3


def safe_file_bytes(model, directory, cache, tokens) -> bytes:
    store = store_in(model, directory)
    store.put(tuple(tokens), cache)
    store.flush()
    return cache_files(directory)[0].read_bytes()


def test_a_write_that_crashes_leaves_no_file_under_a_final_name(model, tmp_path, monkeypatch):
    def crash(tensors, path, metadata):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(prefix_store, "save_file", crash)
    store = store_in(model, tmp_path)
    with pytest.warns(RuntimeWarning, match="could not write .*disk full"):
        store.put(tuple(PROMPT[:8]), cache_of(model, PROMPT[:8]))
        store.flush()
    assert list(tmp_path.iterdir()) == [] and len(store) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(store_in(model, tmp_path)) == 0


def test_model_identity_differs_for_other_weights_and_dtypes(model):
    same = random_model(seed=5)
    assert model_identity(same) == model_identity(model)
    assert model_identity(random_model(seed=6)) != model_identity(model)
    assert model_identity(random_model(seed=5).to(torch.bfloat16)) != model_identity(model)


def test_the_counters_reach_the_metrics_text(model, tmp_path):
    e = engine(model, tmp_path)
    first_out, _ = generate(e, PROMPT)
    generate(e, PROMPT + first_out + [21])
    text = Metrics().render({}, prefix=e.prefix_stats())
    stats = e.prefix_stats()
    assert stats.hits == 1 and stats.misses == 1 and stats.disk_writes == 4
    for line in ("dsv4_prefix_cache_hits_total 1", "dsv4_prefix_cache_misses_total 1",
                 f"dsv4_prefilled_tokens_total {stats.prefilled_tokens}", 'dsv4_prefix_cache_entries{tier="disk"} 4',
                 f'dsv4_prefix_cache_bytes{{tier="memory"}} {stats.memory_bytes}'):
        assert line in text.splitlines()


def test_the_cli_flags_reach_the_engine_config(tmp_path):
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    args = parser.parse_args(["--prefix-cache-bytes", "512MiB", "--prefix-cache-dir", str(tmp_path),
                              "--prefix-cache-disk-bytes", "2GB"])
    assert prefix_cache_config(args) == {"prefix_cache_bytes": 512 << 20, "prefix_cache_dir": str(tmp_path),
                                         "prefix_cache_disk_bytes": 2 * 10**9}
    assert prefix_cache_config(parser.parse_args(["--prefix-cache-bytes", "0"])) == {"prefix_cache_bytes": 0}
    assert prefix_cache_config(parser.parse_args([])) == {}
