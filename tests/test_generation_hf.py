"""Greedy generation with our cache equals transformers' greedy generate on the same tiny model."""
import torch

from hf_reference import build_hf, load_ours, save_hf


def greedy(model, prompt: torch.Tensor, n: int) -> list[int]:
    cache, out = model.make_cache(1), []
    logits = model(prompt, cache, last_only=True)
    for _ in range(n):
        token = logits[:, -1].argmax(-1, keepdim=True)
        out.append(int(token))
        logits = model(token, cache)
    return out


def test_greedy_32_tokens_equal_transformers(tmp_path):
    hf = build_hf(seed=11, num_hidden_layers=4, compress_ratios=[0, 4, 128, 4], num_hash_layers=1, hc_mult=2,
                  index_topk=8)
    ours = load_ours(save_hf(hf, tmp_path / "m"))
    # 110 prompt tokens + 32 generated cross the HCA block boundary at 128 and eight CSA boundaries.
    prompt = torch.randint(2, 256, (1, 110), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf.generate(prompt, max_new_tokens=32, do_sample=False, eos_token_id=None,
                               pad_token_id=0)[0, 110:].tolist()
        got = greedy(ours, prompt, 32)
    assert got == expected
