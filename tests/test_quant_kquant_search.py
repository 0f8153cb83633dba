"""The vectorised K-quant scale searches against literal per-element ports of llama.cpp's loops (make_qkx2_quants,
make_qx_quants, make_q3_quants), written with numpy float32 scalars so every operation rounds like the C code
(sequential sums included): levels and scales must agree bit for bit."""
import numpy as np
import pytest
import torch

from dsv4.quant.kquant_search import fit_affine, fit_symmetric, fit_symmetric_refined

f32 = np.float32


def seq_sum(values) -> np.float32:
    total = f32(0)
    for v in values:
        total = f32(total + v)
    return total


def qkx2_scalar(x, w, nmax, rmin, rdelta, nstep, use_mad):
    lo, hi = min(f32(0), x.min()), x.max()
    if hi == lo:
        return f32(0), -lo, np.zeros(len(x))
    sum_w, sum_x = seq_sum(w), seq_sum(w * x)

    def levels(iscale):
        return np.clip(np.rint(iscale * (x - lo)), 0, nmax).astype(f32)

    def error(scale, mn, lv):
        d = scale * lv + mn - x
        return seq_sum(w * (np.abs(d) if use_mad else d * d))

    iscale = f32(nmax) / (hi - lo)
    scale, best_l = f32(1) / iscale, levels(iscale)
    best, mn = error(scale, lo, best_l), lo
    for i in range(nstep + 1):
        lv = levels((f32(rmin) + f32(rdelta) * f32(i) + f32(nmax)) / (hi - lo))
        sl, sl2, sxl = seq_sum(w * lv), seq_sum(w * lv * lv), seq_sum(w * lv * x)
        det = sum_w * sl2 - sl * sl
        if det > 0:
            this_scale, this_min = (sum_w * sxl - sum_x * sl) / det, (sl2 * sum_x - sl * sxl) / det
            if this_min > 0:
                this_scale, this_min = sxl / sl2, f32(0)
            err = error(this_scale, this_min, lv)
            if err < best:
                best, scale, mn, best_l = err, this_scale, this_min, lv
    return scale, -mn, best_l


def _levels_and_sums(x, iscale, nmax):
    lv = np.clip(np.rint(iscale * x), -nmax, nmax - 1).astype(f32)
    w = x * x
    return lv, seq_sum(w * x * lv), seq_sum(w * lv * lv)


def qx_scalar(x, nmax):
    m = x[np.argmax(np.abs(x))]
    if abs(m) < 1e-15:
        return f32(0), np.zeros(len(x), f32)
    lv, slx, sl2 = _levels_and_sums(x, f32(-nmax) / m, nmax)
    scale = slx / sl2 if sl2 else f32(0)
    best = scale * slx
    for i in [i for i in range(-9, 10) if i]:
        cand, cx, c2 = _levels_and_sums(x, -(f32(nmax) + f32(0.1) * f32(i)) / m, nmax)
        if c2 > 0 and cx * cx > best * c2:
            lv, scale = cand, cx / c2
            best = scale * cx
    return scale, lv + nmax


def q3_scalar(x, nmax):
    m = x[np.argmax(np.abs(x))]
    if abs(m) < 1e-15:
        return f32(0), np.zeros(len(x), f32)
    lv, slx, sl2 = _levels_and_sums(x, f32(-nmax) / m, nmax)
    w = x * x
    for _ in range(5):
        changed = 0
        for i in range(len(x)):
            a = slx - w[i] * x[i] * lv[i]
            if a > 0:
                b = sl2 - w[i] * lv[i] * lv[i]
                new = f32(np.clip(np.rint(x[i] * b / a), -nmax, nmax - 1))
                if new != lv[i]:
                    a, b = a + w[i] * x[i] * new, b + w[i] * new * new
                    if b > 0 and a * a * sl2 > slx * slx * b:
                        lv[i], slx, sl2, changed = new, a, b, changed + 1
        if not changed:
            break
    return slx / sl2, lv + nmax


def groups(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((96, n)).astype(f32)


def assert_identical(ours_scale, ours_levels, ref):
    assert np.array_equal(ours_levels, np.stack([r[-1] for r in ref]))
    assert np.array_equal(ours_scale, np.array([r[0] for r in ref], dtype=f32))


@pytest.mark.parametrize("n,nmax,search,weights", [
    (16, 3, (-0.5, 0.1, 15, True), "abs"),  # Q2_K
    (32, 15, (-1.0, 0.1, 20, False), "rms+abs"),  # Q4_K
    (32, 31, (-0.5, 0.1, 15, False), "rms+abs"),  # Q5_K
])
def test_affine_search_matches_the_scalar_port(n, nmax, search, weights):
    x = groups(n, nmax)
    w = np.abs(x) if weights == "abs" else np.sqrt(np.mean(x * x, 1, keepdims=True, dtype=f32)) + np.abs(x)
    scale, the_min, levels = fit_affine(torch.from_numpy(x), torch.from_numpy(w.astype(f32)), nmax, *search)
    ref = [qkx2_scalar(x[g], w[g].astype(f32), nmax, *search) for g in range(len(x))]
    assert_identical(scale.numpy(), levels.numpy(), ref)
    assert np.array_equal(the_min.numpy(), np.array([r[1] for r in ref], dtype=f32))


@pytest.mark.parametrize("fit,scalar,nmax", [(fit_symmetric, qx_scalar, 32), (fit_symmetric_refined, q3_scalar, 4)])
def test_symmetric_searches_match_the_scalar_ports(fit, scalar, nmax):
    x = groups(16, nmax)
    scale, levels = fit(torch.from_numpy(x), nmax)
    assert_identical(scale.numpy(), levels.numpy(), [scalar(x[g], nmax) for g in range(len(x))])


# Whole super-blocks: the scalar ports above plus llama.cpp's scale quantization and re-quantization steps,
# compared through gguf's dequantizer applied to our bytes (values must be identical).
f16 = np.float16


def affine_superblock_scalar(x, sub, nmax, search, weights, scale_max):
    """quantize_row_q{2,4,5}_K_ref for one block of 256 -> dequantized values."""
    xs = x.reshape(-1, sub)
    fits = [qkx2_scalar(g, weights(g), nmax, *search) for g in xs]
    scales, mins = np.array([f[0] for f in fits], f32), np.array([f[1] for f in fits], f32)

    def codes(v):
        top = v.max()
        inv = f32(scale_max) / top if top > 0 else f32(0)
        return np.minimum(np.rint(inv * v), scale_max).astype(f32), f32(f16(top / f32(scale_max)))

    (ls, d), (lm, dmin) = codes(scales), codes(mins)
    out = []
    for g, fit, s_code, m_code in zip(xs, fits, ls, lm):
        dd, dm = d * s_code, dmin * m_code
        levels = fit[2] if dd == 0 else np.clip(np.rint((g + dm) / dd), 0, nmax).astype(f32)
        out.append(dd * levels - dm)
    return np.concatenate(out)


def symmetric_superblock_scalar(x, nmax, fit, top_code, lo, hi):
    """quantize_row_q{3,6}_K_ref for one block of 256 -> dequantized values."""
    xs = x.reshape(16, 16)
    scales = np.array([fit(g, nmax)[0] for g in xs], f32)
    s_max = scales[np.argmax(np.abs(scales))]
    if abs(s_max) < 1e-15:
        return np.zeros(256, f32)
    iscale = f32(-top_code) / s_max
    codes = np.clip(np.rint(iscale * scales), lo, hi).astype(f32)
    d = f32(f16(f32(1) / iscale))
    out = [d * c * np.clip(np.rint(g / (d * c)), -nmax, nmax - 1).astype(f32) if d * c else np.zeros(16, f32)
           for g, c in zip(xs, codes)]
    return np.concatenate(out)


def rms_plus_abs(g):
    return np.sqrt(seq_sum(g * g) / f32(len(g))) + np.abs(g)


SUPERBLOCK_PORTS = {
    "q2_k": lambda x: affine_superblock_scalar(x, 16, 3, (-0.5, 0.1, 15, True), np.abs, 15),
    "q4_k": lambda x: affine_superblock_scalar(x, 32, 15, (-1.0, 0.1, 20, False), rms_plus_abs, 63),
    "q5_k": lambda x: affine_superblock_scalar(x, 32, 31, (-0.5, 0.1, 15, False), rms_plus_abs, 63),
    "q3_k": lambda x: symmetric_superblock_scalar(x, 4, q3_scalar, 32, -32, 31),
    "q6_k": lambda x: symmetric_superblock_scalar(x, 32, qx_scalar, 128, -128, 127),
}


@pytest.mark.parametrize("name", list(SUPERBLOCK_PORTS))
def test_superblock_quantizer_matches_the_scalar_port(name):
    from gguf import GGMLQuantizationType, quants

    from dsv4.quant import kquants

    x = np.random.default_rng(7).standard_normal((4, 256)).astype(f32) * np.float32([[1], [0.01], [30], [1]])
    x[3, :64] = 0  # zero sub-blocks inside a live super-block
    ours = getattr(kquants, f"quantize_{name}")(torch.from_numpy(x)).numpy()
    values = quants.dequantize(ours.reshape(1, -1), GGMLQuantizationType[name.upper()]).reshape(4, 256)
    assert np.array_equal(values, np.stack([SUPERBLOCK_PORTS[name](row) for row in x]))
