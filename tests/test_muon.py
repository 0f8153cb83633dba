"""Muon: Newton-Schulz numerics, the update rule, the DeepSeek-V4 parameter split and checkpointing."""
import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from dsv4.train.muon import JORDAN_SCHEDULE, V4_SCHEDULE, Muon, MuonShapeError, newton_schulz
from dsv4.train.param_groups import UnknownParameterError, build_optimizer, param_rule, split_params


def _with_singular_values(s: np.ndarray, m: int, n: int, seed: int) -> tuple[torch.Tensor, ...]:
    """(U diag(s) V^T [m, n], U [m, k], V [n, k]) with random orthonormal U, V and k = len(s)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(m, len(s), generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(n, len(s), generator=g, dtype=torch.float64))[0]
    return u @ torch.diag(torch.from_numpy(s)) @ v.T, u, v


def _scalar_iteration(x: np.ndarray, schedule) -> np.ndarray:
    """The Newton-Schulz polynomial applied to scalars in float64: what it does to each singular value."""
    for (a, b, c), steps in schedule:
        for _ in range(steps):
            x = a * x + b * x**3 + c * x**5
    return x


def _svdvals(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(x.double())


def test_quintic_schedule_leaves_singular_values_in_its_band_but_not_at_one():
    # relative singular values >= 3e-3 land in [0.68, 1.21] after 5 quintic steps, never all at 1
    s = np.geomspace(0.05, 1.0, 48)
    assert (s / np.linalg.norm(s)).min() >= 3e-3
    m, _, _ = _with_singular_values(s, 48, 96, seed=0)
    out = _svdvals(newton_schulz(m.float(), JORDAN_SCHEDULE, torch.float32))
    assert out.min() >= 0.68 and out.max() <= 1.21
    assert out.max() - out.min() > 0.2


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 3e-3), (torch.bfloat16, 2e-2)])
def test_v4_hybrid_schedule_settles_singular_values_at_one(dtype, tol):
    s = np.geomspace(1e-2, 1.0, 64)
    assert (s / np.linalg.norm(s)).min() >= 1e-3
    m, _, _ = _with_singular_values(s, 64, 160, seed=1)
    out = _svdvals(newton_schulz(m.float(), V4_SCHEDULE, dtype))
    assert (out - 1).abs().max() <= tol


@pytest.mark.parametrize("shape", [(20, 50), (50, 20)], ids=["wide", "tall"])
@pytest.mark.parametrize("schedule", [JORDAN_SCHEDULE, V4_SCHEDULE], ids=["jordan", "v4"])
def test_newton_schulz_keeps_singular_vectors_and_maps_each_singular_value(shape, schedule):
    s = np.geomspace(0.1, 3.0, 20)
    m, u, v = _with_singular_values(s, *shape, seed=2)
    expected = u @ torch.diag(torch.from_numpy(_scalar_iteration(s / np.linalg.norm(s), schedule))) @ v.T
    out = newton_schulz(m.float(), schedule, torch.float32)
    assert out.shape == shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize("shape", [(5, 24, 40), (3, 40, 24), (2, 3, 16, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stacked_matrices_are_orthogonalised_independently(shape, dtype):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    batched = newton_schulz(g, V4_SCHEDULE, dtype)
    flat = g.reshape(-1, *shape[-2:])
    one_by_one = torch.stack([newton_schulz(x, V4_SCHEDULE, dtype) for x in flat]).reshape(shape)
    torch.testing.assert_close(batched, one_by_one, atol=1e-5 if dtype == torch.float32 else 1e-2, rtol=0)


def test_vectors_are_rejected_with_their_shape():
    with pytest.raises(MuonShapeError, match=r"\(7,\)"):
        newton_schulz(torch.ones(7))
    with pytest.raises(MuonShapeError, match="use_muon=False"):
        Muon([nn.Parameter(torch.ones(4, 4)), nn.Parameter(torch.ones(4))], lr=0.1)


def _polar(x: torch.Tensor) -> torch.Tensor:
    """Exact U V^T of x via SVD, float64."""
    u, _, vh = torch.linalg.svd(x.double(), full_matrices=False)
    return u @ vh


def test_two_muon_steps_match_a_hand_computed_reference():
    lr, wd, mu, gamma = 0.1, 0.05, 0.9, 0.2
    gen = torch.Generator().manual_seed(4)
    w0, g1, g2 = (torch.randn(6, 10, generator=gen) for _ in range(3))
    p = nn.Parameter(w0.clone())
    opt = Muon([p], lr=lr, weight_decay=wd, momentum=mu, update_rms=gamma, ns_dtype=torch.float32)
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()
    # Algorithm 1 by hand, with the exact polar factor in place of Newton-Schulz
    scale = lr * gamma * math.sqrt(10)
    w1 = w0.double() * (1 - lr * wd) - scale * _polar(mu * g1 + g1)  # M_1 = G_1
    m2 = mu * g1 + g2
    w2 = w1 * (1 - lr * wd) - scale * _polar(mu * m2 + g2)
    torch.testing.assert_close(p.detach().double(), w2, atol=1e-4, rtol=0)


def test_same_shape_params_batched_together_get_their_own_updates():
    gen = torch.Generator().manual_seed(11)
    shapes = [(8, 12), (8, 12), (12, 8), (3, 8, 12)]
    w0 = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(2)]
    together = [nn.Parameter(w.clone()) for w in w0]
    alone = [nn.Parameter(w.clone()) for w in w0]
    opt = Muon(together, lr=0.1, ns_dtype=torch.float32)
    opts = [Muon([p], lr=0.1, ns_dtype=torch.float32) for p in alone]
    for step_grads in grads:
        for p, q, g in zip(together, alone, step_grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        for o in opts:
            o.step()
    for p, q in zip(together, alone):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (4, 32, 96)])
def test_muon_update_rms_is_gamma(shape):
    p = nn.Parameter(torch.zeros(shape))
    p.grad = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    Muon([p], lr=1.0, weight_decay=0.0, update_rms=0.18).step()
    rms = p.detach().pow(2).mean().sqrt().item()
    assert rms == pytest.approx(0.18, rel=0.02)


@pytest.mark.parametrize("use_muon", [True, False])
def test_weight_decay_is_decoupled_from_the_gradient_step(use_muon):
    lr, wd = 0.05, 0.3
    gen = torch.Generator().manual_seed(6)
    w0, grad = torch.randn(8, 12, generator=gen), torch.randn(8, 12, generator=gen)
    results = {}
    for decay, g in [(wd, grad), (0.0, grad), (wd, torch.zeros_like(grad))]:
        p = nn.Parameter(w0.clone())
        p.grad = g.clone()
        Muon([{"params": [p], "use_muon": use_muon}], lr=lr, weight_decay=decay).step()
        results[decay, g is grad] = p.detach()
    assert torch.equal(results[wd, False], w0 * (1 - lr * wd))  # zero gradient: pure shrink
    # decay shrinks the old weights and leaves the optimizer's step unchanged
    torch.testing.assert_close(results[wd, True] - w0 * (1 - lr * wd), results[0.0, True] - w0)


def test_adamw_group_matches_torch_adamw():
    gen = torch.Generator().manual_seed(7)
    w0, grads = torch.randn(5, 3, generator=gen), [torch.randn(5, 3, generator=gen) for _ in range(4)]
    ours, ref = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    opt = Muon([{"params": [ours], "use_muon": False}], lr=0.01, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    ref_opt = torch.optim.AdamW([ref], lr=0.01, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    for g in grads:
        ours.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)


# Official DeepSeek-V4 names (architecture.md section 9) with their Flash rank, and the optimizer V4 uses.
OFFICIAL_SPLIT = {
    "embed.weight": (2, "adamw"), "head.weight": (2, "adamw"), "norm.weight": (1, "adamw"),
    "hc_head_fn": (2, "muon"), "hc_head_base": (1, "adamw"), "hc_head_scale": (1, "adamw"),
    "layers.0.attn.wq_a.weight": (2, "muon"), "layers.0.attn.q_norm.weight": (1, "adamw"),
    "layers.0.attn.wq_b.weight": (2, "muon"), "layers.0.attn.wkv.weight": (2, "muon"),
    "layers.0.attn.kv_norm.weight": (1, "adamw"), "layers.0.attn.wo_a.weight": (2, "muon"),
    "layers.0.attn.wo_b.weight": (2, "muon"), "layers.0.attn.attn_sink": (1, "adamw"),
    "layers.2.attn.compressor.wkv.weight": (2, "muon"), "layers.2.attn.compressor.wgate.weight": (2, "muon"),
    "layers.2.attn.compressor.ape": (2, "adamw"), "layers.2.attn.compressor.norm.weight": (1, "adamw"),
    "layers.2.attn.indexer.wq_b.weight": (2, "muon"), "layers.2.attn.indexer.weights_proj.weight": (2, "muon"),
    "layers.2.attn.indexer.compressor.wkv.weight": (2, "muon"), "layers.2.attn.indexer.compressor.ape": (2, "adamw"),
    "layers.0.attn_norm.weight": (1, "adamw"), "layers.0.ffn_norm.weight": (1, "adamw"),
    "layers.0.hc_attn_fn": (2, "muon"), "layers.0.hc_attn_base": (1, "adamw"), "layers.0.hc_attn_scale": (1, "adamw"),
    "layers.0.hc_ffn_fn": (2, "muon"), "layers.0.hc_ffn_base": (1, "adamw"), "layers.0.hc_ffn_scale": (1, "adamw"),
    "layers.0.ffn.gate.weight": (2, "muon"), "layers.3.ffn.gate.bias": (1, "adamw"),
    "layers.0.ffn.experts.0.w1.weight": (2, "muon"), "layers.0.ffn.experts.255.w2.weight": (2, "muon"),
    "layers.0.ffn.experts.w3.weight": (3, "muon"),  # a stacked [E, out, in] layout
    "layers.0.ffn.shared_experts.w1.weight": (2, "muon"), "layers.0.ffn.shared_experts.w2.weight": (2, "muon"),
    "mtp.0.e_proj.weight": (2, "muon"), "mtp.0.h_proj.weight": (2, "muon"), "mtp.0.enorm.weight": (1, "adamw"),
    "mtp.0.hnorm.weight": (1, "adamw"), "mtp.0.norm.weight": (1, "adamw"), "mtp.0.head.weight": (2, "adamw"),
    "mtp.0.hc_head_fn": (2, "muon"), "mtp.0.hc_head_base": (1, "adamw"), "mtp.0.attn.wq_a.weight": (2, "muon"),
}


@pytest.mark.parametrize("name", OFFICIAL_SPLIT)
def test_official_names_follow_the_v4_split(name):
    ndim, rule = OFFICIAL_SPLIT[name]
    assert param_rule(name, ndim) == rule


@pytest.mark.parametrize("name, ndim", [("layers.0.attn.wq_a.scale", 2), ("layers.0.hc_attn_gamma", 1),
                                        ("layers.0.hc_mid_fn", 2), ("layers.0.ffn.experts.w1", 3)])
def test_unknown_names_are_rejected_by_name(name, ndim):
    with pytest.raises(UnknownParameterError, match=name.split(".")[-1]):
        param_rule(name, ndim)


def test_split_covers_every_parameter_of_the_tiny_model():
    from dsv4.config import ModelConfig
    from dsv4.model.transformer import Transformer

    model = Transformer(ModelConfig.preset("tiny-official-ratios"))
    muon, adamw = split_params(model)
    assert len(muon) + len(adamw) == len(list(model.parameters()))
    names = {id(p): n for n, p in model.named_parameters()}
    assert {"embed.weight", "head.weight", "norm.weight"} <= {names[id(p)] for p in adamw}
    assert all(p.ndim >= 2 for p in muon)


class _Named(nn.Module):
    """A module tree whose parameters carry the given dotted names; `buffers` are registered as buffers."""

    def __init__(self, params: dict[str, tuple[int, ...]], buffers: dict[str, torch.Tensor] | None = None):
        super().__init__()
        tensors = [(n, nn.Parameter(torch.randn(s) * 0.3)) for n, s in params.items()]
        for name, value in tensors + list((buffers or {}).items()):
            owner = self
            *path, leaf = name.split(".")
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, nn.Module())
                owner = getattr(owner, part)
            (owner.register_parameter if isinstance(value, nn.Parameter) else owner.register_buffer)(leaf, value)


TINY = {"embed.weight": (32, 8), "layers.0.attn.wq_a.weight": (12, 8), "layers.0.attn.q_norm.weight": (12,),
        "layers.0.hc_attn_fn": (6, 16), "layers.0.hc_attn_base": (6,), "layers.0.hc_attn_scale": (3,),
        "layers.0.ffn.gate.weight": (4, 8), "layers.0.ffn.experts.w1.weight": (4, 6, 8), "norm.weight": (8,),
        "head.weight": (32, 8)}


def test_split_params_covers_every_trainable_parameter_once_and_skips_buffers():
    model = _Named(TINY, buffers={"layers.0.ffn.gate.tid2eid": torch.zeros(32, 2, dtype=torch.int64)})
    model.get_parameter("layers.0.attn.q_norm.weight").requires_grad_(False)  # frozen: no optimizer at all
    muon, adamw = split_params(model)
    named = dict(model.named_parameters())
    names = {id(p): n for n, p in named.items()}
    assert sorted(names[id(p)] for p in muon) == sorted(n for n in TINY if param_rule(n, len(TINY[n])) == "muon")
    assert sorted(names[id(p)] for p in adamw) == sorted(
        n for n in TINY if param_rule(n, len(TINY[n])) == "adamw" and n != "layers.0.attn.q_norm.weight")
    opt = build_optimizer(model, lr=1e-3)
    assert [g["use_muon"] for g in opt.param_groups] == [True, False]


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    """A few steps of a toy loss that gives every trainable parameter a gradient."""
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(8))
    w = model.get_parameter
    for step in steps:
        opt.zero_grad()
        h = x @ w("layers.0.attn.wq_a.weight").T.sum(1, keepdim=True) * w("layers.0.hc_attn_scale")[0]
        loss = (h.sin() + w("embed.weight")[step] @ w("head.weight").T).pow(2).mean()
        extra = [w("layers.0.ffn.experts.w1.weight").pow(3), w("layers.0.hc_attn_fn").sin(), w("norm.weight"),
                 w("layers.0.hc_attn_base").cos(), w("layers.0.ffn.gate.weight").pow(2),
                 w("layers.0.attn.q_norm.weight")]
        (loss + sum(t.sum() for t in extra)).backward()
        opt.step()


def test_state_dict_round_trip_continues_bit_identically():
    torch.manual_seed(9)
    straight = _Named(TINY)
    resumed_model = _Named(TINY)
    resumed_model.load_state_dict(straight.state_dict())
    opt = build_optimizer(straight, lr=0.01)
    _train(straight, opt, range(3))
    blob = io.BytesIO()
    torch.save({"model": straight.state_dict(), "opt": opt.state_dict()}, blob)
    _train(straight, opt, range(3, 6))

    blob.seek(0)
    saved = torch.load(blob)
    resumed_model.load_state_dict(saved["model"])
    resumed_opt = build_optimizer(resumed_model, lr=123.0)  # hyperparameters come from the checkpoint
    resumed_opt.load_state_dict(saved["opt"])
    _train(resumed_model, resumed_opt, range(3, 6))
    for (name, a), b in zip(straight.named_parameters(), resumed_model.parameters()):
        assert torch.equal(a, b), name


def test_muon_fits_a_linear_regression():
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(256, 32, generator=gen)
    target = x @ torch.randn(32, 16, generator=gen) / math.sqrt(32)
    w = nn.Parameter(torch.zeros(16, 32))
    opt = Muon([w], lr=0.1, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - t / 150)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = (x @ w.T - target).pow(2).mean()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    assert losses[-1] < 0.02 * losses[0]
