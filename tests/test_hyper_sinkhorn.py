"""The native and numpy Sinkhorns used at inference are bitwise the plain-PyTorch reference, and the model falls
back to the reference wherever the fast path could differ (gradients, n > 4)."""
import pytest
import torch

import dsv4.model.hyper as hyper
from dsv4 import kernels
from dsv4.kernels import ops
from tiny_models import random_model


NATIVE = pytest.mark.skipif(kernels.backend() is None, reason="no native kernels (no C compiler)")


def _native(logits: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    return kernels.sinkhorn(torch.softmax(logits, dim=-1) + eps, iters, eps)


@pytest.mark.parametrize("fast", [pytest.param(hyper.sinkhorn_numpy, id="numpy"),
                                  pytest.param(_native, id="native", marks=NATIVE)])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("iters", [1, 2, 20])
def test_the_fast_sinkhorns_are_bitwise_the_reference(fast, n, iters):
    g = torch.Generator().manual_seed(n * 100 + iters)
    for shape, scale in [((8, 1), 1.0), ((2, 37), 3.0), ((1, 5), 20.0), ((3, 2), 1e-3)]:
        logits = torch.randn(*shape, n, n, generator=g) * scale
        assert torch.equal(fast(logits, iters, 1e-6), hyper.sinkhorn(logits, iters, 1e-6))


@NATIVE
def test_a_compiled_graph_keeps_the_native_sinkhorn_as_one_call():
    logits = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * 4
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(lambda x: hyper.fast_sinkhorn(x, 20, 1e-6), backend=backend, fullgraph=True)
    assert torch.equal(compiled(logits), hyper.sinkhorn(logits, 20, 1e-6))
    targets = [node.target for node in graphs[0].graph.nodes if node.op == "call_function"]
    assert torch.ops.dsv4.sinkhorn.default in targets or torch.ops.dsv4.sinkhorn in targets
    assert len(targets) < 8  # softmax, + eps, the op: no unrolled normalisations
    with pytest.raises(kernels.KernelError, match="fp32"):
        kernels.sinkhorn(logits.double(), 20, 1e-6)


def test_the_fast_path_is_skipped_where_it_could_differ(monkeypatch):
    calls = []
    monkeypatch.setattr(hyper, "sinkhorn_numpy", lambda *a: calls.append(a) or hyper.sinkhorn(*a))
    monkeypatch.setattr(ops, "sinkhorn", lambda *a: calls.append(a) or kernels.sinkhorn(*a))
    wide = torch.randn(2, 1, 5, 5)
    assert torch.equal(hyper.fast_sinkhorn(wide, 20, 1e-6), hyper.sinkhorn(wide, 20, 1e-6)) and not calls
    leaf = torch.randn(2, 1, 4, 4, requires_grad=True)
    hyper.fast_sinkhorn(leaf, 20, 1e-6).sum().backward()
    assert leaf.grad is not None and not calls
    hyper.fast_sinkhorn(leaf.detach().double(), 20, 1e-6)
    assert not calls
    hyper.fast_sinkhorn(leaf.detach(), 20, 1e-6)
    assert len(calls) == 1


@pytest.mark.parametrize("hc_mult", [2, 4])
def test_inference_logits_equal_the_reference_sinkhorn_exactly(monkeypatch, hc_mult):
    model = random_model(hc_mult=hc_mult, seed=4)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fast = model(ids)
        monkeypatch.setattr(hyper, "fast_sinkhorn", hyper.sinkhorn)
        reference = model(ids)
    assert torch.equal(fast, reference)
