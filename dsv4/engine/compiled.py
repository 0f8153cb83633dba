"""The compiled decode step: the model's fixed-shape forward for one or two new tokens per row, under torch.compile.

Compiled block by block: one graph per kind of block (sliding / CSA / HCA, hash-routed or not), shared by every
layer of that kind (their parameters are graph inputs of equal shapes), plus the head and the MTP draft. Flash's
43 layers thus compile as a handful of graphs, not one 43-layer graph. Eager around them: the token-id check,
reserving entry storage (`Transformer.reserve`, the only allocation that depends on how far a sequence has come),
the embedding lookup and advancing positions. Inside, nothing reads a value back to the host.

Shapes. The batch dim and every compressed-entry capacity are marked dynamic before each call, so rows joining and
leaving and entry storage growing reuse the same graphs (duck sizing is off: two capacities that happen to be
equal are not tied together). Dynamo specialises size-1 dims, so batch 1 has its own graphs: per S (1 = decode,
2 = speculative verification) one set for batch 1 and one for any larger batch. `warm_up` compiles them all
ahead of time; after it, steady-state decoding never recompiles (`compile_count` counts every compilation).

Guards. A step whose shape kind (batch 1 or more, up to the native kernels' row bound; tokens per row) was warmed
up runs with dynamo's `skip_guard_eval_unsafe` stance: only the guards that tell the compiled graphs apart are
checked, not every parameter's and cache tensor's properties on each of the dozens of graph calls of a step
(0.8 ms of a 10 ms step on the benchmark model). That is safe exactly when some warmed graph fits the call, which
the shape-kind check ensures; any other call checks every guard and compiles what it needs.

What stays outside a graph: routed experts offloaded to disk (their reads are data-dependent) or in a format the
native fused op cannot read (the PyTorch per-expert loop, `grouped_expert_sum`). Native matmuls and the fused
experts are custom ops inside the graphs (`dsv4.kernels.ops`).
"""
from __future__ import annotations

import hashlib
import os
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
import torch._dynamo
import torch.fx.experimental._config as fx_config

from dsv4 import kernels
from dsv4.cache import ModelCache, make_cache
from dsv4.kernels.toolchain import cache_dir
from dsv4.model.transformer import Transformer
from dsv4.quant.experts import FusedExperts
from dsv4.quant.linear import NATIVE_MAX_ROWS

MAX_STEP_TOKENS = 2  # decode (1) and speculative verification (2): the calls the compiled step takes
RECOMPILE_LIMIT = 64  # graphs per compiled function: block kinds x (batch 1 | larger) x (S 1 | 2)


def _block(block, X, pos, ids, layer_cache):
    return block(X, pos, ids, layer_cache)


def _logits(model: Transformer, X: torch.Tensor) -> torch.Tensor:
    return model.logits(X)


def _draft(model: Transformer, X: torch.Tensor, next_ids: torch.Tensor, cache: ModelCache) -> torch.Tensor:
    return model.run_mtp(X, next_ids, cache)[:, -1].argmax(-1)


_COUNTS: dict[str, int] = {}  # backend -> graphs compiled in this process
_FUNCTIONS: dict[str, tuple] = {}  # backend -> the compiled (_block, _logits, _draft): one set per process, so
                                   # every engine over every model shares the graphs dynamo already holds


def compile_count(backend: str = "inductor") -> int:
    """Graphs compiled so far in this process for `backend` (steady-state decoding must not raise it)."""
    return _COUNTS.get(backend, 0)


def _persistent_cache() -> None:
    """Keep inductor's compiled graphs next to the kernels' build cache (~/.cache/dsv4/inductor/<source digest>)
    unless the user chose a place: its default, under /tmp, is wiped on reboot, and a cold compile costs minutes.
    One folder per version of dsv4's code: inductor's cache entries carry the shape guards of the code that traced
    them, which another version's graphs must not inherit. (Importing torch._dynamo already wrote the default into
    the environment, so "unset" means "equal to the default".)"""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir().parent / "inductor" / _source_digest())


def _source_digest() -> str:
    """A digest of the dsv4 package's Python sources (what the compiled graphs are traced from)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _compiled(backend: str) -> tuple:
    if backend not in _FUNCTIONS:
        _persistent_cache()
        fx_config.use_duck_shape = False
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit,
                                                               8 * RECOMPILE_LIMIT)

        def counted(gm, example_inputs):
            _COUNTS[backend] = _COUNTS.get(backend, 0) + 1
            if backend != "inductor":
                return torch._dynamo.lookup_backend(backend)(gm, example_inputs)
            from torch._inductor.compile_fx import compile_fx

            # The C++ wrapper calls the graph's kernels from C++, not one Python call each (a decode step of the
            # benchmark model: 6.0 vs 9.2 ms).
            return compile_fx(gm, example_inputs, config_patches={"cpp_wrapper": True})

        _FUNCTIONS[backend] = tuple(torch.compile(fn, backend=counted) for fn in (_block, _logits, _draft))
    return _FUNCTIONS[backend]


class CompiledStep:
    """`forward(ids [B, S], cache)` -> (streams [B, S, n, d], fp32 logits [B, S, V]) and `draft(X, next_ids,
    cache)` -> greedy MTP drafts [B], both advancing/using `cache` exactly as the eager model calls do.
    `backend`: inductor (what ships); tests may pass another torch.compile backend."""

    def __init__(self, model: Transformer, backend: str = "inductor"):
        self.model, self.backend = model, backend
        kernels.backend()  # load the native library now: tracing must not run its first-use setup
        for module in model.modules():
            if isinstance(module, FusedExperts):
                module.refresh()  # the graphs read the experts through this table: make sure it is current
        self._block, self._logits, self._draft = _compiled(backend)
        self._warm: set[tuple] = set()  # shape kinds (`_kind`) whose graphs warm_up compiled, forward and draft

    def _warmed(self, ids: torch.Tensor, part: str) -> bool:
        """Whether warm-up compiled graphs for this call's shape kind (then nothing needs marking as dynamic and
        only the differentiating guards are checked; see the module docstring)."""
        return (part, *_kind(ids)) in self._warm

    @staticmethod
    def _stance(warmed: bool):
        if not warmed:
            return nullcontext()
        return torch.compiler.set_stance(torch._dynamo.eval_frame._stance.stance, skip_guard_eval_unsafe=True)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, cache: ModelCache) -> tuple[torch.Tensor, torch.Tensor]:
        self.model._check_ids(ids)
        self.model.reserve(cache, ids.shape[1])
        X, logits = self._guarded(ids, "forward", lambda warmed: self._forward(ids, cache, warmed))
        cache.advance(ids.shape[1])
        return X, logits

    def _forward(self, ids, cache, warmed: bool):
        if not warmed:  # marks matter only to a compilation: a warmed step skips their per-tensor Python calls
            _mark_dynamic(ids, cache)
        with self._stance(warmed):
            X = self.model.run_layers(ids, cache, run_block=self._block if warmed else self._run_block)
            return X, self._logits(self.model, X if warmed else _dynamic_batch(X))

    def _guarded(self, ids: torch.Tensor, part: str, call):
        """call(warmed) for this step's shape kind. Should a warmed kind still meet a graph it lacks (dynamo then
        refuses to compile under the warmed stance), the kind is dropped from the warm set and the call redone with
        every guard checked, compiling what it needs: a slow step, never a failed one. Redoing is safe: a step
        writes the cache at its positions only (the same values again) and positions advance after it."""
        warmed = self._warmed(ids, part)
        if not warmed:
            return call(False)
        try:
            return call(True)
        except RuntimeError as e:
            if "skip_guard_eval_unsafe" not in str(e):
                raise
            warnings.warn(f"the compiled decode step met a {part} graph warm-up did not compile (batch "
                          f"{ids.shape[0]}, {ids.shape[1]} token(s)); compiling it now")
            self._warm.discard((part, *_kind(ids)))
            return call(False)

    def _run_block(self, block, X, pos, ids, layer_cache):
        return self._block(block, _dynamic_batch(X), _dynamic_batch(pos), ids, layer_cache)

    @torch.no_grad()
    def draft(self, X: torch.Tensor, next_ids: torch.Tensor, cache: ModelCache) -> torch.Tensor:
        self.model._check_ids(next_ids)
        return self._guarded(next_ids, "draft", lambda warmed: self._draft_call(X, next_ids, cache, warmed))

    def _draft_call(self, X, next_ids, cache, warmed: bool):
        if not warmed:
            _mark_dynamic(next_ids, cache)
        with self._stance(warmed):
            return self._draft(self.model, X if warmed else _dynamic_batch(X), next_ids, cache)

    def warm_up(self, speculative: bool, progress=None, batch_sizes: tuple[int, ...] = (1, 2)) -> float:
        """Compile every graph steady-state decoding uses (batch 1 and, through batch 2, every larger batch; S = 2
        with speculation, else 1) on scratch caches. Returns the seconds it took; `progress(message)` hears each
        stage."""
        start = time.perf_counter()
        cfg = self.model.cfg
        for tokens in (2,) if speculative else (1,):
            for batch in batch_sizes:
                if progress:
                    progress(f"compiling the decode step: batch {'1' if batch == 1 else '>1'}, {tokens} token(s) "
                             f"per row")
                cache = make_cache(cfg, batch, self.model.dtype, self.model.norm.weight.device)
                ids = torch.full((batch, tokens), min(2, cfg.vocab_size - 1), dtype=torch.long)
                X, _ = self.forward(ids, cache)
                self._warm.add(("forward", *_kind(ids)))
                if speculative:
                    self.draft(X, ids, cache)
                    self._warm.add(("draft", *_kind(ids)))
        return time.perf_counter() - start


def _kind(ids: torch.Tensor) -> tuple[bool, bool, int]:
    """What picks a step's graphs: batch 1 or more (dynamo specialises size 1), within the native kernels' row
    bound, and tokens per row."""
    rows = ids.shape[0] * ids.shape[1]
    return ids.shape[0] == 1, rows <= NATIVE_MAX_ROWS, ids.shape[1]


def _dynamic_batch(t: torch.Tensor) -> torch.Tensor:
    torch._dynamo.maybe_mark_dynamic(t, 0)
    return t


def _mark_dynamic(ids: torch.Tensor, cache: ModelCache) -> None:
    """Batch dims and entry capacities vary in steady state: tell dynamo before it sees them (no-op once compiled)."""
    torch._dynamo.maybe_mark_dynamic(ids, 0)
    torch._dynamo.maybe_mark_dynamic(cache.pos, 0)
    for layer in cache.layers + cache.mtp:
        torch._dynamo.maybe_mark_dynamic(layer.window, 0)
        for comp in layer.compressors():
            for t in comp.state_tensors():
                torch._dynamo.maybe_mark_dynamic(t, 0)
            torch._dynamo.maybe_mark_dynamic(comp.entries, 0)
            torch._dynamo.maybe_mark_dynamic(comp.entries, 1)
