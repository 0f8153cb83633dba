"""The engine: continuous batching over sequences, one `step()` at a time (synchronous; see `loop.py`).

Each step the scheduler admits waiting requests, feeds prompt chunks (chunked prefill) and advances every
decoding sequence in one batched forward: by one token, or with speculative decoding by up to two tokens
(MTP draft + verification, `speculative.py`). Finished and cancelled sequences leave between steps.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from dsv4.cache import ModelCache, expected_nbytes, resolve_kv_dtype
from dsv4.engine.batch_cache import BatchCache
from dsv4.engine.errors import CacheBudgetError, ContextLengthError, EngineError
from dsv4.engine.params import SamplingParams
from dsv4.engine.prefix_cache import PrefixCache, PrefixStats
from dsv4.engine.prefix_store import PrefixStore, model_identity
from dsv4.engine.runner import Runner
from dsv4.engine.sampler import sample
from dsv4.engine.scheduler import Scheduler
from dsv4.engine.sequence import Sequence, State, TokenEvent
from dsv4.engine.speculative import SpeculativeDecoder
from dsv4.model.transformer import Transformer


@dataclass
class EngineConfig:
    """Limits and switches. prefix_cache_bytes: the prefix cache's memory tier; prefix_cache_dir: also keep prefix
    caches on disk there, across restarts, under prefix_cache_disk_bytes (prefix reuse is off with neither);
    speculative needs MTP weights; compile runs decode steps through torch.compile (`compiled.py`; call `warm_up`
    to compile before the first request). kv_dtype: the caches' entry storage (`dsv4.cache.KV_DTYPES`; auto:
    the official FP8/FP4 bytes when the model simulates the official quantization). cache_bytes: the KV caches of
    the running sequences, each counted at its full length (prompt + max_tokens, by the cache's byte formula),
    stay within this budget: a request that alone exceeds it is refused (CacheBudgetError), others wait for room
    (None: no limit)."""

    max_running: int = 16
    max_waiting: int = 64
    prefill_chunk: int = 256
    speculative: bool = False
    compile: bool = False
    prefix_cache_bytes: int = 256 << 20
    prefix_cache_dir: str | None = None
    prefix_cache_disk_bytes: int = 16 << 30
    eos_ids: frozenset[int] = field(default_factory=lambda: frozenset({1}))
    kv_dtype: str = "auto"
    cache_bytes: int | None = None


class Engine:
    """add() requests, step() until they finish, cancel() any time. Not thread-safe: drive it from one thread."""

    def __init__(self, model: Transformer, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        self.runner = Runner(model, compile=self.config.compile)
        self.context = model.cfg.max_position_embeddings
        self.kv_dtype = resolve_kv_dtype(self.config.kv_dtype, model.cfg, model.dtype)
        self.scheduler = Scheduler(self.config.max_running, self.config.max_waiting, self.config.prefill_chunk,
                                   self.config.cache_bytes)
        self.spec = SpeculativeDecoder(self.runner, self._choose) if self.config.speculative else None
        on = self.config.prefix_cache_bytes or self.config.prefix_cache_dir is not None
        self.prefix = self._prefix_cache(model) if on else None
        self.prefilled_tokens = self.cached_tokens = 0  # prompt tokens fed through the model / taken from the cache
        self.batch = BatchCache()
        self.sequences: dict[int, Sequence] = {}

    def _prefix_cache(self, model: Transformer) -> PrefixCache:
        lookahead = 1 if self.spec else 0  # MTP rows at position p depend on token p + 1
        disk = None
        if self.config.prefix_cache_dir is not None:
            disk = PrefixStore(self.config.prefix_cache_dir, self.config.prefix_cache_disk_bytes,
                               model_identity(model), lookahead, self.new_cache)
        return PrefixCache(self.config.prefix_cache_bytes, lookahead, disk)

    def new_cache(self) -> ModelCache:
        """An empty batch-1 cache in this engine's storage."""
        return self.runner.model.make_cache(1, kv_dtype=self.kv_dtype)

    def cache_bytes_for(self, tokens: int) -> int:
        """Bytes of one sequence's cache at `tokens` tokens (capped at the context), by the cache's formula."""
        model = self.runner.model
        return expected_nbytes(model.cfg, min(tokens, self.context), 1, model.dtype.itemsize, self.kv_dtype)

    def prefix_stats(self) -> PrefixStats:
        """Prefix reuse over the engine's lifetime: tokens prefilled and cached, lookups, the tiers' sizes."""
        stats = self.prefix.stats() if self.prefix is not None else PrefixStats()
        stats.prefilled_tokens, stats.cached_tokens = self.prefilled_tokens, self.cached_tokens
        return stats

    def warm_up(self, progress=None, batch_sizes: tuple[int, ...] = (1, 2)) -> float:
        """Compile the decode step's graphs now for these batch sizes (1, and 2 for every larger one); no-op
        without `compile`. Returns the seconds it took."""
        if self.runner.compiled is None:
            return 0.0
        try:
            return self.runner.compiled.warm_up(self.spec is not None, progress, batch_sizes)
        except Exception as e:  # no C++ compiler, an inductor bug...: decoding still works, eagerly
            warnings.warn(f"compiling the decode step failed ({type(e).__name__}: {str(e)[:200]}); decoding "
                          "eagerly instead", RuntimeWarning, stacklevel=2)
            self.runner.compiled = None
            return 0.0

    def add(self, prompt: list[int], params: SamplingParams, in_reasoning: bool = False) -> Sequence:
        """Queue a request. in_reasoning: the prompt opened a think block (for the reasoning budget)."""
        return self.enqueue(self.new_sequence(prompt, params, in_reasoning))

    def new_sequence(self, prompt: list[int], params: SamplingParams, in_reasoning: bool = False) -> Sequence:
        """A validated sequence, not queued yet (reads only the model's config: safe from any thread)."""
        if not prompt:
            raise EngineError("prompt: expected at least one token, found none")
        vocab = self.runner.cfg.vocab_size
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise EngineError(f"prompt: token ids must lie in [0, {vocab}), found {min(prompt)}..{max(prompt)}")
        if len(prompt) >= self.context:
            raise ContextLengthError(len(prompt), self.context)
        need, budget = self.cache_bytes_for(len(prompt) + params.max_tokens), self.config.cache_bytes
        if budget is not None and need > budget:
            raise CacheBudgetError(len(prompt), params.max_tokens, need, budget)
        if params.grammar is not None and params.grammar.vocab_size != vocab:
            raise EngineError(f"grammar: built for a vocabulary of {params.grammar.vocab_size} ids, "
                              f"the model has {vocab}")
        return Sequence(list(prompt), params, in_reasoning=in_reasoning)

    def enqueue(self, seq: Sequence) -> Sequence:
        self.scheduler.add(seq, self.cache_bytes_for(len(seq.prompt) + seq.params.max_tokens))
        self.sequences[seq.seq_id] = seq
        return seq

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def cancel(self, seq_id: int) -> TokenEvent | None:
        """Stop a sequence now and free its cache; None if it already finished."""
        seq = self.sequences.get(seq_id)
        if seq is None:
            return None
        self._finish(seq, "cancelled", store=False)
        return TokenEvent(seq_id, None, finish_reason="cancelled")

    def step(self) -> list[TokenEvent]:
        """Run one scheduling step; return the tokens it produced (in no particular sequence order)."""
        plan = self.scheduler.schedule()
        events = []
        for seq, n in plan.prefill:
            events += self._prefill(seq, n)
        if plan.decode:
            events += self._decode(plan.decode)
        return events

    def _prefill(self, seq: Sequence, n: int) -> list[TokenEvent]:
        """Feed the next n prompt tokens; after the last one, sample the first output token."""
        if seq.cache is None:
            found = self.prefix.lookup(seq.prompt) if self.prefix is not None else None
            seq.cache = found or self.new_cache()
            seq.num_cached = seq.cached_prompt = int(seq.cache.pos[0])
            self.cached_tokens += seq.cached_prompt
            n = min(n, seq.prefill_remaining)
        lo, hi, last = seq.num_cached, seq.num_cached + n, len(seq.prompt) - 1
        if self.prefix is not None and lo < last < hi:
            self._feed_prompt(seq, lo, last)  # stop before the last token: that prefix is what later turns share
            lo = last
        X, logits = self._feed_prompt(seq, lo, hi)
        if hi < len(seq.prompt):
            return []
        seq.state = State.DECODE
        event = self._choose(seq, logits[0])
        if self.spec and event.finish_reason is None:
            seq.draft = self.runner.draft(X, [seq.prompt[lo + 1:] + [event.token]], seq.cache)[0]
        return self._finish_last(seq, [event])

    def _feed_prompt(self, seq: Sequence, lo: int, hi: int):
        """Prompt positions lo..hi-1 into the sequence's cache; with MTP, its rows too where the next id is known."""
        X, logits = self.runner.forward([seq.prompt[lo:hi]], seq.cache)
        seq.num_cached = hi
        self.prefilled_tokens += hi - lo
        if self.spec and hi < len(seq.prompt):
            self.runner.draft(X, [seq.prompt[lo + 1:hi + 1]], seq.cache)
        if self.prefix is not None and hi == len(seq.prompt) - 1:
            self.prefix.store(seq.prompt, seq.cache)
        return X, logits

    def _decode(self, seqs: list[Sequence]) -> list[TokenEvent]:
        """One batched forward over every decoding sequence (two tokens per row with speculation)."""
        cache, order = self.batch.assemble(seqs)
        if self.spec:
            per_row = self.spec.step(order, cache)
        else:
            _, logits = self.runner.forward([[s.output[-1]] for s in order], cache, step=True)
            per_row = [[self._choose(s, logits[i])] for i, s in enumerate(order)]
        for s, events in zip(order, per_row):
            self._finish_last(s, events)
        return [e for events in per_row for e in events]

    def _choose(self, seq: Sequence, logits) -> TokenEvent:
        """Sample and record one token from logits [V]; the event carries the finish reason it causes."""
        s = sample(logits, seq.params, seq.generator, seq.prompt, seq.output, forced=seq.forced_token(),
                   constraint=seq.active_constraint())
        reason = seq.append(s.token, self.config.eos_ids, self.context)
        return TokenEvent(seq.seq_id, s.token, s.logprob, s.top_logprobs, reason)

    def _finish_last(self, seq: Sequence, events: list[TokenEvent]) -> list[TokenEvent]:
        if events and events[-1].finish_reason is not None:
            self._finish(seq, events[-1].finish_reason)
        return events

    def _finish(self, seq: Sequence, reason: str, store: bool = True) -> None:
        """Leave the scheduler and release the cache at once (a copy goes to the prefix cache if kept)."""
        self.scheduler.remove(seq)
        self.sequences.pop(seq.seq_id, None)
        seq.finish_reason = reason
        row = self.batch.remove(seq.seq_id) or seq.cache
        seq.cache = None
        if store and row is not None and self.prefix is not None:
            self.prefix.store(seq.tokens, row, copy=False)  # the row is ours alone now
