"""Expert offloading: a tiny model saved in the official FP4/FP8 format and loaded with an expert budget smaller
than its routed experts (so they are split between the RAM cache and the checkpoint on disk) generates exactly the
tokens of the same checkpoint loaded fully in memory; the store's counters agree with routing observed on the
resident model and with the stored tensor sizes read from the headers by the safetensors library."""
import pytest
import torch
from safetensors import safe_open

import dsv4
from dsv4.offload import ExpertBudgetError, OffloadConfig, offload_stats, parse_size
from dsv4.offload.install import module_bytes
from dsv4.offload.stats import OffloadStats
from dsv4.offload.store import ExpertStore
from dsv4.weights.writer import save_model
from tiny_models import random_model

# FP8-friendly dims (multiples of 128) that also allow the QAT simulation the official config switches on.
DIMS = dict(hidden_size=128, q_lora_rank=128, head_dim=80, qk_rope_head_dim=16, o_lora_rank=64, index_head_dim=32,
            moe_intermediate_size=128, n_routed_experts=8, num_hidden_layers=3, compress_ratios=[0, 4, 16, 0])
PROMPTS = [[5, 17, 99, 3, 250, 8, 41], [300, 2, 2, 7, 11, 12, 13, 14, 15]]
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Official-format checkpoints of one random model: recipe -> path, written on first use."""
    paths = {}

    def get(recipe: str):
        if recipe not in paths:
            paths[recipe] = tmp_path_factory.mktemp(recipe) / "ckpt"
            save_model(random_model("tiny", seed=5, **DIMS), paths[recipe], recipe, shard_bytes=300_000)
        return paths[recipe]
    return get


@pytest.fixture
def checkpoint(checkpoints):
    return checkpoints("FP4")


@torch.no_grad()
def greedy(model, prompt: list[int], n: int = NEW_TOKENS) -> list[int]:
    cache, ids, out = model.make_cache(1), torch.tensor([prompt]), []
    for _ in range(n):
        out.append(int(model(ids, cache)[0, -1].argmax()))
        ids = torch.tensor([[out[-1]]])
    return out


def expert_bytes(model) -> int:
    return module_bytes(model.layers[1].ffn.experts[0])


@pytest.mark.parametrize("stored,recipe,prefetch", [("FP4", None, True), ("FP4", "FP4", False), ("FP8", None, False)])
def test_offloaded_experts_generate_the_same_tokens_as_the_resident_model(checkpoints, stored, recipe, prefetch):
    """Stored FP4 experts held dequantized (fp32) or as FP4 QuantLinear; stored FP8 experts dequantized."""
    checkpoint = checkpoints(stored)
    resident = dsv4.load_model(checkpoint, dtype=torch.float32, recipe=recipe)
    n_experts = sum(len(b.ffn.experts) for b in [*resident.layers, *resident.mtp])
    budget = 12 * expert_bytes(resident)  # 12 of 32 experts (4 MoE layers of 8); one token needs 2 per layer
    offloaded = dsv4.load_model(checkpoint, dtype=torch.float32, recipe=recipe,
                                expert_budget=OffloadConfig(budget, prefetch=prefetch))
    for prompt in PROMPTS:
        assert greedy(offloaded, prompt) == greedy(resident, prompt)
    stats = offload_stats(offloaded)
    assert budget < n_experts * expert_bytes(resident)
    assert stats.hits > 0 and stats.misses > 0 and stats.evictions > 0  # both tiers served experts
    assert 0 < stats.resident_bytes <= budget
    assert not any(isinstance(m, torch.nn.Linear) and m.in_features == DIMS["hidden_size"]
                   and "experts" in n and "shared" not in n for n, m in offloaded.named_modules())


def test_budget_below_one_tokens_active_experts_is_refused_with_the_sizes(checkpoint):
    size = expert_bytes(dsv4.load_model(checkpoint, dtype=torch.float32, recipe="FP4"))
    with pytest.raises(ExpertBudgetError, match=rf"routes each token to 2 experts of {size} bytes, {2 * size}"):
        dsv4.load_model(checkpoint, dtype=torch.float32, recipe="FP4", expert_budget=2 * size - 1)


def routed_expert_calls(model, prompts) -> tuple[int, set[str]]:
    """On a resident model: the number of (layer call, active expert) pairs and the set of experts ever used."""
    calls, used = [0], set()

    def count(name):
        def hook(module, inputs, output):
            active = output[1].unique().tolist()
            calls[0] += len(active)
            used.update(f"{name}.experts.{e}" for e in active)
        return hook

    handles = [m.gate.register_forward_hook(count(n)) for n, m in model.named_modules() if n.endswith("ffn")
               and hasattr(m, "gate")]
    for prompt in prompts:
        greedy(model, prompt)
    for h in handles:
        h.remove()
    return calls[0], used


def stored_expert_bytes(path, key: str) -> int:
    """Bytes of one expert's stored tensors, from the safetensors library's view of the headers."""
    total = 0
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            for name in st.keys():
                if name.startswith(f"{key}."):
                    sl = st.get_slice(name)
                    total += torch.empty(0, dtype=getattr(torch, _TORCH[sl.get_dtype()])).element_size() * \
                        int(torch.tensor(sl.get_shape()).prod())
    return total


_TORCH = {"I8": "int8", "F8_E4M3": "float8_e4m3fn", "F8_E8M0": "float8_e8m0fnu", "BF16": "bfloat16"}


def test_stats_add_up_to_the_routing_and_the_stored_sizes(checkpoint):
    resident = dsv4.load_model(checkpoint, dtype=torch.float32, recipe="FP4")
    lookups, used = routed_expert_calls(resident, PROMPTS)
    sizes = {k: stored_expert_bytes(checkpoint, k) for k in used}
    assert len(set(sizes.values())) == 1 and min(sizes.values()) > 0
    # Budget for every expert: each used expert is read once, then always hit.
    everything = dsv4.load_model(checkpoint, dtype=torch.float32, recipe="FP4", expert_budget=10**9)
    for prompt in PROMPTS:
        greedy(everything, prompt)
    s = offload_stats(everything)
    assert (s.lookups, s.hits + s.misses, s.misses, s.evictions) == (lookups, lookups, len(used), 0)
    assert s.bytes_read == sum(sizes.values())
    # A small budget: more misses, each reading one expert's stored bytes.
    small = dsv4.load_model(checkpoint, dtype=torch.float32, recipe="FP4", expert_budget=3 * expert_bytes(resident))
    for prompt in PROMPTS:
        greedy(small, prompt)
    s = offload_stats(small)
    assert s.lookups == s.hits + s.misses == lookups and s.misses > len(used)
    assert s.bytes_read == s.misses * next(iter(sizes.values()))
    assert s.read_seconds > 0 and s.build_seconds > 0 and s.as_dict()["hit_rate"] == s.hits / s.lookups


def test_store_evicts_the_least_recently_used_expert_and_never_exceeds_the_budget():
    built = []
    store = ExpertStore(lambda k: built.append(k) or torch.nn.Identity(), dict.fromkeys("abcde", 10), 30,
                        OffloadStats(budget=30), prefetch=False)
    for keys in (["a", "b"], ["c"], ["a"], ["d"], ["b", "c"]):  # d evicts b (LRU), then b returns evicting a
        lease = store.acquire(keys)
        for k in keys:
            lease[k]
        assert store.used <= 30
    assert built == ["a", "b", "c", "d", "b"] and list(store.cache) == ["d", "c", "b"]  # hits touched first
    lease = store.acquire(list("abcde"))  # more than fits: chunks [a b c] (a evicts d), then [d e] (evict b, c)
    for k in "abcde":
        lease[k]
        assert store.used <= 30
    assert built[5:] == ["a", "d", "e"] and list(store.cache) == ["a", "d", "e"]


@pytest.mark.parametrize("text,size", [("4GB", 4 * 10**9), ("512MiB", 512 * 2**20), ("1.5g", 1_500_000_000),
                                       ("123", 123), (77, 77)])
def test_budget_sizes_parse_in_decimal_and_binary_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["4 parsecs", "", "-1GB", 0, "GB"])
def test_malformed_budget_is_an_error_naming_the_value(bad):
    with pytest.raises(ExpertBudgetError, match="expert budget"):
        parse_size(bad)
