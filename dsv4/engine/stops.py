"""Stop strings over streamed text: emit what cannot be the start of a stop string, hold back the rest."""
from __future__ import annotations


class StopMatcher:
    """`push(text) -> (text safe to emit, hit)`; after a hit the text from the stop string on is dropped."""

    def __init__(self, stops: list[str] | tuple[str, ...] = ()):
        self.stops = [s for s in stops if s]
        self._held = ""
        self.hit = False
        self.matched: str | None = None  # the stop string that matched

    def push(self, text: str) -> tuple[str, bool]:
        if self.hit:
            return "", True
        if not self.stops:
            return text, False
        buf = self._held + text
        found = [(i, s) for i, s in ((buf.find(s), s) for s in self.stops) if i >= 0]
        if found:
            at, self.matched = min(found, key=lambda f: f[0])
            self.hit, self._held = True, ""
            return buf[:at], True
        keep = max((k for s in self.stops for k in range(1, len(s)) if buf.endswith(s[:k])), default=0)
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep], False

    def flush(self) -> str:
        """End of stream: held text was not a stop string after all."""
        held, self._held = self._held, ""
        return "" if self.hit else held
