"""Where the official numerics differ from transformers' in ways an fp32 parity test cannot see, we follow the
spec: fp32 islands survive a bf16 cast, and the routing weight multiplies the SwiGLU output before w2."""
import torch
import torch.nn.functional as F

from dsv4.model.moe import Expert
from dsv4.model.transformer import cast_model
from tiny_models import random_model

# Spec 1.4: kept in fp32 whatever the model dtype (per official name suffix).
FP32_SUFFIXES = ("norm.weight", "attn_sink", "ape", "compressor.wkv.weight", "compressor.wgate.weight",
                 "gate.bias", "head.weight", "hc_attn_fn", "hc_attn_base", "hc_attn_scale", "hc_ffn_fn",
                 "hc_ffn_base", "hc_ffn_scale", "hc_head_fn", "hc_head_base", "hc_head_scale")


def test_bf16_cast_keeps_the_spec_fp32_islands():
    model = cast_model(random_model("tiny"), torch.bfloat16)
    for name, p in model.named_parameters():
        want = torch.float32 if name.endswith(FP32_SUFFIXES) else torch.bfloat16
        assert p.dtype == want, name
    logits = model(torch.randint(0, 512, (1, 20)))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_routing_weight_is_applied_before_w2_in_fp32_then_cast():
    """Reference: h = silu(min(w1 x, L)) * clamp(w3 x) in fp32, times the routing weight, cast to bf16, then w2.
    transformers multiplies after w2; in bf16 the two orders round differently."""
    torch.manual_seed(0)
    expert = Expert(64, 32, limit=10.0).to(torch.bfloat16)
    x = torch.randn(16, 64, dtype=torch.bfloat16) * 4
    w = torch.rand(16) * 1.5
    g = F.linear(x, expert.w1.weight).float().clamp(max=10.0)
    v = F.linear(x, expert.w3.weight).float().clamp(-10.0, 10.0)
    spec = F.linear((F.silu(g) * v * w[:, None]).to(torch.bfloat16), expert.w2.weight)
    hf_order = (F.linear((F.silu(g) * v).to(torch.bfloat16), expert.w2.weight) * w[:, None]).to(torch.bfloat16)
    got = expert(x, w)
    assert torch.equal(got, spec)
    assert not torch.equal(got, hf_order)


def test_forward_and_backward_run_under_bf16_autocast():
    """Training may use CPU bf16 autocast: the fp32 islands (compressor projections) must not be downcast into
    their fp32 state buffers."""
    model = random_model("tiny").train()
    ids = torch.randint(0, 512, (2, 40))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(ids).float().logsumexp(-1).mean()
    loss.backward()
    grad = model.layers[1].attn.compressor.wkv.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
