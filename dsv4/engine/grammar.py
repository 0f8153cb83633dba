"""Grammar-constrained decoding with xgrammar: a grammar compiled once per schema, a matcher per sequence.

Two kinds: a JSON answer (`response_format`), and a DSML tool-call block (`tool_choice` required or named;
xgrammar's `deepseek_v4` structural tag, arguments following each tool's schema). The vocabulary is described
to xgrammar once per tokenizer and kind: the raw bytes of every BPE id; added (control) tokens are special, so
no grammar ever allows `</think>` or BOS, and EOS only where the grammar is complete; the DSML token keeps its
text for tool-call grammars only. Compiled grammars are cached per `GrammarSpec`.

Each sequence owns a `Constraint`: it masks the logits row before sampling and advances on every token the
sequence keeps. Rows are sampled one at a time, so batching needs nothing more, and speculative decoding
neither: the engine samples each kept token through the same masked path in order, and a rejected MTP draft
never reaches the matcher (no rollback needed).

xgrammar is imported on first use: importing the engine stays light for requests without a grammar.
"""
from __future__ import annotations

import functools
import json
import re
import threading
from dataclasses import dataclass

import torch

from dsv4.chat import Tokenizer
from dsv4.engine.errors import GrammarError

# Whitespace characters allowed between two JSON tokens: pretty-printing fits, a model stuck on blanks does not.
MAX_WHITESPACE = 16
ANY_OBJECT = '{"type": "object"}'  # with strict_mode off: any JSON object, any properties


@dataclass(frozen=True)
class GrammarSpec:
    """What an answer must be. kind "json": a JSON value matching `source`, a JSON schema (key order kept: it is
    the order properties are written in); the default is any JSON object. kind "tool_calls": a DSML block,
    `source` the JSON of {"tools", "tool_choice", "parallel"}. `field` is the request field errors name."""

    kind: str = "json"
    source: str = ANY_OBJECT
    strict: bool = False
    field: str = "response_format"

    def __post_init__(self) -> None:
        if self.kind not in ("json", "tool_calls"):
            raise ValueError(f"GrammarSpec.kind: expected json or tool_calls, found {self.kind!r}")

    @classmethod
    def json_schema(cls, schema: dict, field: str = "response_format") -> GrammarSpec:
        """A spec from a JSON schema; strict: no properties or items beyond those the schema names."""
        return cls("json", json.dumps(schema, ensure_ascii=False), strict=True, field=field)

    @classmethod
    def tool_calls(cls, tools: list[dict], tool_choice: str | dict, parallel: bool = True,
                   field: str = "tools") -> GrammarSpec:
        """A DSML tool-call block: calls of `tools` ("required": one, or more if `parallel`) or of the named one."""
        source = json.dumps({"tools": tools, "tool_choice": tool_choice, "parallel": parallel}, ensure_ascii=False)
        return cls("tool_calls", source, field=field)


class Constraint:
    """One sequence's matcher: `mask_` a logits row before sampling, `advance` on each kept token, then `done`."""

    def __init__(self, compiled, vocab_size: int, stop_ids: frozenset[int]):
        xgr = _xgrammar()
        self._matcher = xgr.GrammarMatcher(compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)   # [1, ceil(V / 32)] int32
        self._bits = torch.arange(32, dtype=torch.int32)
        self.vocab_size, self.stop_ids = vocab_size, stop_ids

    def allowed(self) -> torch.Tensor:
        """bool [V]: the tokens the grammar allows next (EOS alone if it allows none: an empty language)."""
        self._matcher.fill_next_token_bitmask(self._bitmask)
        bits = (self._bitmask[0].unsqueeze(-1) >> self._bits) & 1                # [ceil(V / 32), 32]
        allowed = bits.flatten()[:self.vocab_size].bool()
        if not allowed.any():  # e.g. {"enum": []}: end the answer rather than sample from nothing
            allowed[list(self.stop_ids)] = True
        return allowed

    def mask_(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [V'] in place: every token the grammar forbids next gets -inf (ids past V are forbidden too)."""
        allowed = self.allowed().to(logits.device)
        n = min(self.vocab_size, logits.shape[-1])
        logits[:n].masked_fill_(~allowed[:n], float("-inf"))
        logits[n:] = float("-inf")
        return logits

    def accepts(self, tokens: tuple[int, ...]) -> bool:
        """Whether the grammar takes `tokens` from where the matcher stands (the matcher does not move)."""
        probe = self._matcher.fork()
        return all(probe.accept_token(t) for t in tokens)

    def advance(self, token: int) -> None:
        accepted = self._matcher.accept_token(token)
        assert accepted, f"grammar matcher rejected token {token}, which its own mask allowed"

    @property
    def done(self) -> bool:
        """True once the answer is complete: EOS taken, or the grammar matched whole and allows nothing but EOS
        (the sequence then ends without the extra step that would only sample that EOS)."""
        if self._matcher.is_terminated():
            return True
        if not self._matcher.is_completed():
            return False
        return set(self.allowed().nonzero().flatten().tolist()) <= self.stop_ids


class Grammar:
    """A compiled grammar over one tokenizer's vocabulary; each sequence takes its own `constraint()`."""

    def __init__(self, compiled, vocab_size: int, stop_ids: frozenset[int]):
        self._compiled, self.vocab_size, self.stop_ids = compiled, vocab_size, stop_ids

    def constraint(self) -> Constraint:
        return Constraint(self._compiled, self.vocab_size, self.stop_ids)


@functools.lru_cache(maxsize=256)
def compile_grammar(tokenizer: Tokenizer, spec: GrammarSpec) -> Grammar:
    """The grammar of `spec` over `tokenizer`'s vocabulary, compiled once per (tokenizer, spec); a schema the
    compiler cannot convert raises `GrammarError` naming `spec.field`. Slow only the first time per tokenizer."""
    markup = spec.kind == "tool_calls"
    compiler = _compiler(tokenizer, markup)
    try:
        if markup:
            compiled = compiler.compile_structural_tag(_tool_call_tag(json.loads(spec.source)))
        else:
            compiled = compiler.compile_json_schema(spec.source, strict_mode=spec.strict,
                                                    max_whitespace_cnt=MAX_WHITESPACE)
    except (RuntimeError, ValueError) as e:  # xgrammar's report of a schema it cannot convert
        raise GrammarError(spec.field, _reason(e)) from None
    return Grammar(compiled, tokenizer.vocab_size, frozenset({tokenizer.eos_id}))


def _tool_call_tag(source: dict):
    """xgrammar's structural tag for V4's DSML block; the think block is the engine's (constraint after it)."""
    return _xgrammar().get_model_structural_tag("deepseek_v4", tools=source["tools"],
                                                 tool_choice=source["tool_choice"], reasoning="disabled",
                                                 parallel_tool_calls=source["parallel"],
                                                 max_whitespace_cnt=MAX_WHITESPACE)


_compiler_lock = threading.Lock()  # the server compiles from worker threads; build each vocabulary once


def _compiler(tokenizer: Tokenizer, markup: bool):
    with _compiler_lock:
        return _compiler_for(tokenizer, markup)


@functools.cache
def _compiler_for(tokenizer: Tokenizer, markup: bool):
    """xgrammar's compiler for the tokenizer: raw bytes per id, added tokens special (empty), EOS the stop;
    with `markup` the DSML token keeps its text (tool-call blocks are spelled with it)."""
    xgr = _xgrammar()
    special = tokenizer.added_ids - ({tokenizer.dsml_id} if markup else set())
    vocab = [b"" if i in special else tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
    info = xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=tokenizer.vocab_size,
                             stop_token_ids=[tokenizer.eos_id])
    return xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)  # our lru_cache keeps what is compiled


def _reason(error: Exception) -> str:
    """xgrammar's message without its timestamp and C++ source location."""
    text = str(error).strip()
    return re.sub(r"^\[[\d:.]+\] \S+:\d+: ", "", text.splitlines()[0] if text else "") or type(error).__name__


def _xgrammar():
    try:
        import xgrammar
    except ImportError as e:
        raise ImportError(f"constrained decoding needs xgrammar: pip install 'dsv4[serve]' ({e})") from e
    return xgrammar
