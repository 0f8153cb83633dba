"""Conversation reconstruction: the tokens each answer was generated as, so a later turn renders them again.

Clients send earlier answers back changed: `reasoning_content` dropped, arguments re-serialised, whitespace
trimmed. Rendered by the official encoder from what the client sent, such a history no longer matches what the
model saw, and the prefix cache misses. The server records, for every answer that ended with EOS, the exact
prompt text it continued and the ids it generated; `recall` (the renderer's hook, `render_v4(recall=)`) gives
those ids back when a turn follows the very same prompt text and says the same thing (same content, same calls
with JSON-equal arguments, reasoning absent or equal up to whitespace). Anything else renders as the encoder does.

Records are kept in memory under a count bound and, with a directory, appended to `turns.jsonl` there, so they
survive a restart (a torn or foreign line is skipped with a warning; a record appended after a torn last line
starts a line of its own).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)
_FILE = "turns.jsonl"


@dataclass(frozen=True)
class Turn:
    """One recorded answer: what it said (content, reasoning, calls as (name, arguments object)) and its ids."""

    prompt: str          # sha256 of the prompt text it continued
    ids: list[int]
    text: str            # the ids decoded, control tokens included
    content: str
    reasoning: str
    calls: list[list]    # [[name, arguments object], ...]

    def says(self, turn: dict) -> bool:
        """Whether a native assistant turn (as a client sent it back) is this answer."""
        if (turn.get("content") or "").strip() != self.content.strip():
            return False
        try:
            calls = [[c["function"]["name"], json.loads(c["function"]["arguments"])] for c in turn.get("tool_calls") or []]
        except (KeyError, TypeError, ValueError):
            return False
        reasoning = turn.get("reasoning_content")
        return calls == self.calls and (not reasoning or reasoning.split() == self.reasoning.split())


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TurnMemory:
    """record() answers, recall() them while rendering; thread-safe (the server records from request tasks)."""

    def __init__(self, directory: str | Path | None = None, max_turns: int = 4096):
        self.max_turns = max_turns
        self._turns: OrderedDict[str, list[Turn]] = OrderedDict()
        self._count = 0
        self._lock = threading.Lock()
        self._path = Path(directory) / _FILE if directory is not None else None
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._load()

    def __len__(self) -> int:
        return self._count

    def record(self, prompt_text: str, ids: list[int], text: str, message: dict) -> None:
        """An answer generated right after `prompt_text`: its ids (ending with EOS), their text, and the message
        it parsed into (`merge_deltas` shape)."""
        calls = [[c["function"]["name"], json.loads(c["function"]["arguments"])] for c in message["tool_calls"]]
        turn = Turn(text_key(prompt_text), list(ids), text, message["content"], message["reasoning_content"], calls)
        with self._lock:
            if any(t == turn for t in self._turns.get(turn.prompt, ())):
                return
            self._add(turn)
            if self._path is not None:
                self._append(turn)

    def recall(self, before: str, turn: dict) -> tuple[str, list[int]] | None:
        """(text, ids) of the recorded answer to the prompt text `before` that says what `turn` says."""
        with self._lock:
            found = next((t for t in self._turns.get(text_key(before), ()) if t.says(turn)), None)
        return (found.text, found.ids) if found is not None else None

    def _add(self, turn: Turn) -> None:
        self._turns.setdefault(turn.prompt, []).append(turn)
        self._turns.move_to_end(turn.prompt)
        self._count += 1
        while self._count > self.max_turns:
            _, old = self._turns.popitem(last=False)
            self._count -= len(old)

    def _append(self, turn: Turn) -> None:
        try:
            if self._path.exists() and self._path.stat().st_size > 64 * (1 << 20):
                self._compact()
            line = json.dumps(asdict(turn), ensure_ascii=False) + "\n"
            with open(self._path, "a+b") as f:
                f.write((b"\n" if _ends_inside_a_line(f) else b"") + line.encode("utf-8"))
                f.flush()
        except OSError as e:
            log.warning("could not save the answer's tokens to %s: %s", self._path, e)

    def _compact(self) -> None:
        """Rewrite the file with the turns kept in memory (atomically)."""
        tmp = self._path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for turns in self._turns.values():
                f.writelines(json.dumps(asdict(t), ensure_ascii=False) + "\n" for t in turns)
        os.replace(tmp, self._path)

    def _load(self) -> None:
        if not self._path.exists():
            return
        bad = 0
        with open(self._path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    turn = Turn(**json.loads(line))
                    if not (isinstance(turn.ids, list) and all(isinstance(i, int) for i in turn.ids)):
                        raise TypeError("ids")
                except (ValueError, TypeError):
                    bad += 1
                    continue
                self._add(turn)
        if bad:
            log.warning("%s: skipped %d unreadable line(s)", self._path, bad)


def _ends_inside_a_line(f) -> bool:
    """Whether the file open in `f` ends without a newline: a write cut short by a crash."""
    if f.seek(0, os.SEEK_END) == 0:
        return False
    f.seek(-1, os.SEEK_END)
    return f.read(1) != b"\n"
