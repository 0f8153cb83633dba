"""The KV compressor shared by CSA (ratio 4, overlapping windows), HCA (ratio 128) and the lightning indexer.

Each token j gives features v_j = W_kv x_j and gate logits z_j = W_gate x_j + ape[j mod m] (fp32 island).
Entry i pools window i (positions m*i .. m*i+m-1) with a per-channel softmax over its slots:
- non-overlap: the window's m tokens, all D_c channels;
- overlap (CSA): the first halves (channels [0, D_c)) of window i-1's tokens and the second halves of window i's,
  i.e. 2m slots; window -1 contributes nothing (z = -inf).
The entry is cast to the activation dtype, RMS-normed, rotated (RoPE at position m*i) and, with the QAT simulation,
rounded; it becomes visible to query t once i < (t+1) // m.

One code path serves prefill, chunked prefill and decode: the chunk's tokens are laid out on a local timeline
that starts one window before the row's current window (the cached "previous window", then the cached prefix of
the current window, then the new tokens), so rows at different positions are handled together.
"""
import torch
from torch import nn

from dsv4.cache import CompressorCache
from dsv4.model.norm import RMSNorm
from dsv4.model.rope import apply_rope


class Compressor(nn.Module):
    """Parameters `wkv`, `wgate` [c*D_c, d], `ape` [m, c*D_c] (fp32), `norm` [D_c]; c = 2 if overlapping."""

    def __init__(self, dim: int, out_dim: int, ratio: int, overlap: bool, eps: float):
        super().__init__()
        width = out_dim * (2 if overlap else 1)
        self.ratio, self.overlap, self.out_dim = ratio, overlap, out_dim
        self.wkv = nn.Linear(dim, width, bias=False, dtype=torch.float32)
        self.wgate = nn.Linear(dim, width, bias=False, dtype=torch.float32)
        self.ape = nn.Parameter(torch.zeros(ratio, width, dtype=torch.float32))
        self.norm = RMSNorm(out_dim, eps)

    def forward(self, x: torch.Tensor, start: torch.Tensor, cache: CompressorCache, freqs: torch.Tensor,
                finish) -> None:
        """Ingest x [B, S, d] at positions start[b] + s; write closed windows' entries into `cache`.

        `finish` post-processes entries [B, n, D_c] (QAT rounding). Entry i is visible to a query at position t only
        once i < (t + 1) // m, so readers of `cache` mask by position (the storage's tail holds unwritten or
        rolled-back entries). The caller reserved the capacity (`ModelCache.reserve`): nothing here allocates per
        sequence length or reads a value back to the host.
        """
        m, (B, S, _) = self.ratio, x.shape
        with torch.autocast(x.device.type, enabled=False):  # fp32 island, as in the reference (also under autocast)
            v = self.wkv(x.float()).float()
            z = self.wgate(x.float()).float()
        offset = start % m                                                 # [B] tokens already in the current window
        n_win = (m - 1 + S) // m + 1                                       # local windows 0..n_win-1
        slots = offset[:, None] + torch.arange(S, device=x.device)         # [B, S] local slot of each new token
        z = z + self.ape[slots % m]
        buf_v, buf_z = self._timeline(cache, v, z, offset, slots, n_win)   # [B, n_win+1, m, c*D_c]
        pooled = self._pool(buf_v, buf_z)                                  # [B, n_win, D_c]
        first = start // m                                                 # global index of local window 0
        index = first[:, None] + torch.arange(n_win, device=x.device)      # [B, n_win]
        closed = (torch.arange(1, n_win + 1, device=x.device) * m)[None] <= (offset + S)[:, None]
        entries = self.norm(pooled.to(cache.fmt.dtype))
        entries = finish(apply_rope(entries, index * m, freqs))
        cache.write(index, entries, closed)  # only the closed windows' entries: a fixed-shape masked write
        self._keep_state(cache, buf_v, buf_z, (offset + S) // m)

    def _timeline(self, cache, v, z, offset, slots, n_win):
        """Local buffers: window -1 = cached previous window, then the current window's cached prefix, new tokens."""
        m, (B, S, width) = self.ratio, v.shape
        buf_v = v.new_zeros(B, (n_win + 1) * m, width)
        buf_z = v.new_full((B, (n_win + 1) * m, width), float("-inf"))
        if self.overlap:
            buf_v[:, :m], buf_z[:, :m] = cache.prev_kv, cache.prev_score
        prefix = (torch.arange(m, device=v.device)[None] < offset[:, None])[..., None]  # [B, m, 1]
        buf_v[:, m:2 * m] = torch.where(prefix, cache.cur_kv, 0.0)
        buf_z[:, m:2 * m] = torch.where(prefix, cache.cur_score, float("-inf"))
        at = (m + slots)[..., None].expand(-1, -1, width)
        buf_v.scatter_(1, at, v)
        buf_z.scatter_(1, at, z)
        return buf_v.view(B, n_win + 1, m, width), buf_z.view(B, n_win + 1, m, width)

    def _pool(self, buf_v: torch.Tensor, buf_z: torch.Tensor) -> torch.Tensor:
        """Per-channel softmax pooling of every local window. [B, n_win+1, m, c*D_c] -> [B, n_win, D_c] fp32."""
        d = self.out_dim
        if self.overlap:  # slots: first halves of the window before, second halves of this window
            v = torch.cat([buf_v[:, :-1, :, :d], buf_v[:, 1:, :, d:]], dim=2)
            z = torch.cat([buf_z[:, :-1, :, :d], buf_z[:, 1:, :, d:]], dim=2)
        else:
            v, z = buf_v[:, 1:], buf_z[:, 1:]
        weights = torch.softmax(z, dim=2).nan_to_num(0.0)  # an all-empty (future) window gives NaN: unused
        return (weights * v).sum(dim=2)

    def _keep_state(self, cache: CompressorCache, buf_v, buf_z, last: torch.Tensor) -> None:
        """New current window = local window `last` (buffer index last+1); previous = the one before it."""
        def keep(dst, buf, k):  # in place (the state tensors stay the caller's); values only: a cache carries no
            dst.copy_(buf[torch.arange(buf.shape[0], device=buf.device), k].detach())  # gradient between calls

        keep(cache.cur_kv, buf_v, last + 1)
        keep(cache.cur_score, buf_z, last + 1)
        if self.overlap:
            keep(cache.prev_kv, buf_v, last)
            keep(cache.prev_score, buf_z, last)
