"""The V4 transformer: embedding, hc_mult residual streams through mHC blocks, the HC head, norm and fp32 head;
plus the multi-token-prediction (MTP) blocks. Parameter names are the official checkpoint names."""
import torch
from torch import nn

from dsv4.cache import LayerCache, ModelCache, make_cache
from dsv4.config import ModelConfig
from dsv4.model.attention import Attention
from dsv4.model.hyper import hc_head, hc_params, hc_post, hc_pre
from dsv4.model.moe import Gate, MoE
from dsv4.model.norm import RMSNorm


class TokenIdError(ValueError):
    """Token ids outside [0, vocab_size)."""


class Block(nn.Module):
    """attn and ffn sub-blocks, each wrapped by an mHC site (hc_attn_*, hc_ffn_*). X: [B, S, n, d]."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id, self.cfg = layer_id, cfg
        n, d, rows = cfg.hc_mult, cfg.hidden_size, (2 + cfg.hc_mult) * cfg.hc_mult
        self.attn = Attention(cfg, layer_id)
        self.ffn = MoE(cfg, layer_id)
        self.attn_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.ffn_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.hc_attn_fn, self.hc_attn_base, self.hc_attn_scale = hc_params(n, d, rows, 3)
        self.hc_ffn_fn, self.hc_ffn_base, self.hc_ffn_scale = hc_params(n, d, rows, 3)

    def forward(self, X: torch.Tensor, pos: torch.Tensor, ids: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        c = self.cfg
        u, post, comb = hc_pre(X, self.hc_attn_fn, self.hc_attn_base, self.hc_attn_scale,
                               c.hc_sinkhorn_iters, c.hc_eps, c.rms_norm_eps)
        X = hc_post(self.attn(self.attn_norm(u), pos, cache), X, post, comb)
        u, post, comb = hc_pre(X, self.hc_ffn_fn, self.hc_ffn_base, self.hc_ffn_scale,
                               c.hc_sinkhorn_iters, c.hc_eps, c.rms_norm_eps)
        return hc_post(self.ffn(self.ffn_norm(u), ids), X, post, comb)


class HCHead(nn.Module):
    """Mixin for modules owning hc_head_fn [n, n*d], hc_head_base [n], hc_head_scale [1]."""

    def init_hc_head(self, cfg: ModelConfig) -> None:
        self.hc_head_fn, self.hc_head_base, self.hc_head_scale = hc_params(cfg.hc_mult, cfg.hidden_size,
                                                                           cfg.hc_mult, 1)

    def collapse(self, X: torch.Tensor) -> torch.Tensor:
        """[B, S, n, d] -> [B, S, d]."""
        return hc_head(X, self.hc_head_fn, self.hc_head_base, self.hc_head_scale, self.cfg.hc_eps,
                       self.cfg.rms_norm_eps)


class MTPBlock(Block, HCHead):
    """MTP module: X0 = h_proj(hnorm(X)) + e_proj(enorm(embed(next ids))), one SWA block, its own HC head + norm."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__(cfg, layer_id)
        d = cfg.hidden_size
        self.e_proj = nn.Linear(d, d, bias=False)
        self.h_proj = nn.Linear(d, d, bias=False)
        self.enorm = RMSNorm(d, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(d, cfg.rms_norm_eps)
        self.norm = RMSNorm(d, cfg.rms_norm_eps)
        self.init_hc_head(cfg)

    def forward(self, X: torch.Tensor, emb: torch.Tensor, pos, ids, cache: LayerCache) -> torch.Tensor:
        """X: main streams [B, S, n, d]; emb: embeddings of the next tokens [B, S, d]. Returns normed [B, S, d]."""
        X0 = self.h_proj(self.hnorm(X)) + self.e_proj(self.enorm(emb))[:, :, None]
        return self.norm(self.collapse(super().forward(X0, pos, ids, cache)))


class Transformer(HCHead):
    """The V4 language model. `forward(ids, cache)` -> logits; `cache` carries positions between calls."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=torch.float32)
        self.init_hc_head(cfg)
        n = cfg.num_hidden_layers
        self.mtp = nn.ModuleList(MTPBlock(cfg, n + j) for j in range(cfg.num_nextn_predict_layers))
        self.dtype = torch.get_default_dtype()  # activation dtype; set by cast_model (weights may be quantized)

    def make_cache(self, batch_size: int = 1, kv_dtype: str = "auto") -> ModelCache:
        """An empty cache in the model's activation dtype and device; kv_dtype: its entry storage (dsv4.cache)."""
        return make_cache(self.cfg, batch_size, self.dtype, self.norm.weight.device, kv_dtype)

    def forward(self, input_ids: torch.Tensor, cache: ModelCache | None = None,
                last_only: bool = False) -> torch.Tensor:
        """input_ids: [B, S] continuing each row of `cache` (a fresh cache at position 0 if None).

        Returns fp32 logits [B, S, vocab] ([B, 1, vocab] with last_only) and advances the cache by S.
        """
        X = self.hidden_streams(input_ids, cache)
        return self.logits(X[:, -1:] if last_only else X)

    def hidden_streams(self, input_ids: torch.Tensor, cache: ModelCache | None = None) -> torch.Tensor:
        """Run the main layers. Returns the final mHC streams [B, S, n, d] (what the MTP module consumes)."""
        self._check_ids(input_ids)
        fresh = cache is None
        cache = self.make_cache(input_ids.shape[0]) if fresh else cache
        self.reserve(cache, input_ids.shape[1], last=0 if fresh else None)
        X = self.run_layers(input_ids, cache)
        cache.advance(input_ids.shape[1])
        return X

    def reserve(self, cache: ModelCache, tokens: int, last: int | None = None) -> None:
        """Grow the cache's entry storage for the next `tokens` positions (see ModelCache.reserve). Host-side, before
        a forward."""
        cache.reserve(tokens, min_entries=self.cfg.index_topk, last=last)

    def run_layers(self, input_ids: torch.Tensor, cache: ModelCache, run_block=None) -> torch.Tensor:
        """The main layers on ids [B, S] already checked, with storage reserved; does not advance the cache.
        Fixed shapes and no host synchronisation given (B, S, entry capacities). `run_block(block, X, pos, ids,
        layer_cache)` runs one block (default: calling it; a compiled step passes its compiled function)."""
        pos = cache.pos[:, None] + torch.arange(input_ids.shape[1], device=input_ids.device)
        h = self.embed(input_ids)
        X = h[:, :, None].expand(-1, -1, self.cfg.hc_mult, -1).contiguous()   # [B, S, n, d]: n identical streams
        for layer, layer_cache in zip(self.layers, cache.layers):
            X = run_block(layer, X, pos, input_ids, layer_cache) if run_block else layer(X, pos, input_ids, layer_cache)
        return X

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        """[B, S, n, d] streams -> fp32 logits [B, S, vocab] (the head is an fp32 island)."""
        return self.head(self.norm(self.collapse(X)).float())

    def mtp_logits(self, X: torch.Tensor, next_ids: torch.Tensor, cache: ModelCache, depth: int = 0) -> torch.Tensor:
        """MTP: combine the main streams at positions i with the embeddings of tokens i+1 to predict tokens i+2.

        X: [B, S, n, d] from `hidden_streams` (which already advanced `cache` past these positions);
        next_ids: [B, S]. Returns fp32 logits [B, S, vocab].
        """
        self._check_ids(next_ids)
        return self.run_mtp(X, next_ids, cache, depth)

    def run_mtp(self, X: torch.Tensor, next_ids: torch.Tensor, cache: ModelCache, depth: int = 0) -> torch.Tensor:
        """`mtp_logits` without the id check (its MTP layer's storage was reserved with the main layers')."""
        S = next_ids.shape[1]
        pos = cache.pos[:, None] - S + torch.arange(S, device=next_ids.device)
        y = self.mtp[depth](X, self.embed(next_ids), pos, next_ids, cache.mtp[depth])
        return self.head(y.float())

    def _check_ids(self, ids: torch.Tensor) -> None:
        if ids.dtype not in (torch.int32, torch.int64) or ids.dim() != 2:
            raise TokenIdError(f"input_ids must be an integer tensor [batch, seq], found {ids.dtype} {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.cfg.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.cfg.vocab_size)][0]
            raise TokenIdError(f"token id {int(bad)} is outside the vocabulary [0, {self.cfg.vocab_size})")


def fp32_island_names(model: nn.Module) -> set[str]:
    """Parameters the reference keeps in fp32 whatever the model dtype: norms, mHC, sinks, compressors (their
    projections and ape), the gate bias and the head."""
    names = set()
    for mod_name, mod in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for p_name, _ in mod.named_parameters(recurse=False):
            if (isinstance(mod, RMSNorm) or p_name.startswith("hc_") or p_name in ("attn_sink", "ape")
                    or (isinstance(mod, Gate) and p_name == "bias") or mod_name.endswith(("compressor.wkv",
                                                                                         "compressor.wgate"))
                    or mod_name == "head"):
                names.add(prefix + p_name)
    return names


def cast_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast floating parameters to dtype, keeping the fp32 islands in fp32 (in place; returns model)."""
    keep = fp32_island_names(model)
    for name, p in model.named_parameters():
        if p.is_floating_point():
            p.data = p.data.to(torch.float32 if name in keep else dtype)
    model.dtype = dtype
    return model
