"""The scale searches behind llama.cpp's K-quants, vectorised over groups (one Python loop per candidate, never per block).

Re-stated from ggml-quants.c (reference, non-imatrix paths). Sums run left to right in fp32 (`seq_sum`) like the C
loops, so near-ties between candidate grids resolve the same way. All take x [g, n] fp32, each row (group) alone,
and work internally on the transpose [n, g], so that every sum step is one contiguous vector add over all groups.
- `fit_affine` (make_qkx2_quants): x ~ scale * L + min with min <= 0 and L in [0, nmax]. Start from the plain
  min/max grid, then try nstep+1 stretched grids (nmax + rmin + i*rdelta levels over the range); for each,
  solve weighted least squares for (scale, min) on the chosen levels and keep the lowest weighted error.
- `fit_symmetric` (make_qx_quants, rmse_type 1): x ~ scale * l with l in [-nmax, nmax); try 19 grids
  -(nmax + 0.1 i) / signed_absmax and keep the one maximising (sum w x l)^2 / sum w l^2, w = x^2.
- `fit_symmetric_refined` (make_q3_quants): start from the absmax grid, then up to 5 sweeps of coordinate
  descent: move one level to its least-squares optimum if that raises (sum w x l)^2 / sum w l^2.
"""
import torch

from .bitpack import nearest_int, signed_absmax

GROUP_MAX_EPS = 1e-15


def f32(v: float) -> torch.Tensor:
    """A C `float` constant (so 0.1f arithmetic rounds like the C code)."""
    return torch.tensor(v, dtype=torch.float32)


def absmax_or_zero(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group: the signed value of largest magnitude [g], and a mask of all-(near-)zero groups [g]."""
    m = signed_absmax(x).squeeze(1)
    return m, m.abs() < GROUP_MAX_EPS


def seq_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of t [n, g] over n, strictly in order in fp32 (the C loop's rounding): [g]. Rows are contiguous, so each
    step is one vector add over all groups."""
    acc = t[0].clone()
    for row in t[1:]:
        acc += row
    return acc


def _weighted_error(w, x, scale, mn, levels, use_mad: bool) -> torch.Tensor:
    diff = (scale * levels).add_(mn).sub_(x)
    return seq_sum(w * (diff.abs_() if use_mad else diff.square_()))


def fit_affine(x, w, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool):
    """make_qkx2_quants. x, w: [g, n]. Returns scale [g], the_min = -min >= 0 [g], levels [g, n] (fp32 integers)."""
    x, w = x.T.contiguous(), w.T.contiguous()  # [n, g]: the sums below run over contiguous rows
    mn = x.amin(0).clamp(max=0)
    span = x.amax(0) - mn
    flat = span == 0
    span = torch.where(flat, torch.ones_like(span), span)
    sum_w, sum_x = seq_sum(w), seq_sum(w * x)
    shifted = x - mn

    def levels(iscale):
        return nearest_int(iscale * shifted).clamp_(0, nmax)

    iscale = f32(nmax) / span  # a Python scalar numerator would divide as reciprocal-times (one extra rounding)
    scale, best_min, best_l = 1 / iscale, mn, levels(iscale)
    best = _weighted_error(w, x, scale, mn, best_l, use_mad)
    for i in range(nstep + 1):
        cand = levels((f32(rmin) + f32(rdelta) * i + nmax) / span)
        wl = w * cand
        sum_l, sum_l2, sum_xl = seq_sum(wl), seq_sum(wl * cand), seq_sum(wl.mul_(x))
        det = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        clip = this_min > 0  # a positive offset is not representable: refit the scale alone
        this_scale = torch.where(clip, sum_xl / sum_l2, this_scale)
        this_min = torch.where(clip, torch.zeros_like(this_min), this_min)
        err = _weighted_error(w, x, this_scale, this_min, cand, use_mad)
        take = (det > 0) & (err < best)
        best = torch.where(take, err, best)
        scale, best_min = torch.where(take, this_scale, scale), torch.where(take, this_min, best_min)
        best_l = torch.where(take, cand, best_l)
    zero = torch.zeros_like(scale)
    return torch.where(flat, zero, scale), torch.where(flat, -mn, -best_min), torch.where(flat, 0, best_l).T


def _symmetric_levels(x, w, wx, iscale, nmax: int):
    """Levels of x [n, g] on the grid 1/iscale [g], and the C sums sum w x l, sum w l l (w = x^2, wx = w x)."""
    l = nearest_int(iscale * x).clamp_(-nmax, nmax - 1)
    return l, seq_sum(wx * l), seq_sum((w * l).mul_(l))


def _columns(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [g, n] -> x, w = x^2, w x, each [n, g] contiguous (the sums run over rows)."""
    x = x.T.contiguous()
    w = x * x
    return x, w, w * x


def fit_symmetric(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qx_quants(rmse_type=1). x [g, n] -> scale [g] (signed), levels [g, n] in [0, 2 nmax) (fp32 integers)."""
    m, zero = absmax_or_zero(x)
    m = torch.where(zero, torch.ones_like(m), m)
    x, w, wx = _columns(x)
    l, sumlx, suml2 = _symmetric_levels(x, w, wx, f32(-nmax) / m, nmax)
    scale = torch.where(suml2 != 0, sumlx / suml2, torch.zeros_like(sumlx))
    best = scale * sumlx
    for i in [i for i in range(-9, 10) if i != 0]:
        cand, slx, sl2 = _symmetric_levels(x, w, wx, -(nmax + f32(0.1) * i) / m, nmax)
        take = (sl2 > 0) & (slx * slx > best * sl2)
        scale = torch.where(take, slx / sl2, scale)
        best = torch.where(take, scale * slx, best)
        l = torch.where(take, cand, l)
    return torch.where(zero, torch.zeros_like(scale), scale), torch.where(zero, 0, l + nmax).T


def fit_symmetric_refined(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """make_q3_quants(do_rmse=true). x [g, n] -> scale [g] (signed), levels [g, n] in [0, 2 nmax) (fp32 integers).

    A group whose sweep changes nothing stays unchanged in later sweeps, so running all 5 equals the C early exit.
    """
    m, zero = absmax_or_zero(x)
    m = torch.where(zero, torch.ones_like(m), m)
    x, w, wx = _columns(x)
    l, sumlx, suml2 = _symmetric_levels(x, w, wx, f32(-nmax) / m, nmax)
    for _ in range(5):
        for i in range(x.shape[0]):
            wi, xi, li = w[i], x[i], l[i]
            slx, sl2 = sumlx - wx[i] * li, suml2 - wi * li * li
            new = nearest_int(xi * sl2 / slx).clamp_(-nmax, nmax - 1)
            slx_new, sl2_new = slx + wx[i] * new, sl2 + wi * new * new
            take = (slx > 0) & (new != li) & (sl2_new > 0) & (slx_new * slx_new * suml2 > sumlx * sumlx * sl2_new)
            l[i] = torch.where(take, new, li)
            sumlx, suml2 = torch.where(take, slx_new, sumlx), torch.where(take, sl2_new, suml2)
    return torch.where(zero, torch.zeros_like(sumlx), sumlx / suml2), torch.where(zero, 0, l + nmax).T
