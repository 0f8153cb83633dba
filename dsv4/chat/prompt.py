"""A rendered prompt that remembers which text is ours and which is the user's.

The string equals the reference encoder's output byte for byte. The split
matters only for tokenisation: control-token literals (`<｜User｜>`, `<think>`,
`｜DSML｜` ...) become control ids only inside *trusted* text (markers and
templates we write); inside *untrusted* text (anything taken from the request:
message content, reasoning, tool arguments and schemas) they are encoded as
ordinary BPE text, as the official DeepSeek API does (spec §1.3). With no such
literal in untrusted text the ids equal a plain encode of the whole string.
"""

from dataclasses import dataclass, field

from dsv4.chat import tokens


@dataclass
class Prompt:
    """Rendered prompt as `(text, trusted)` segments; `text` is their concatenation."""

    segments: list[tuple[str, bool]] = field(default_factory=list)

    def add(self, text: str, *, trusted: bool) -> None:
        if text:
            self.segments.append((text, trusted))

    def mark(self, text: str) -> None:
        """Append our own markup (control tokens, templates)."""
        self.add(text, trusted=True)

    def user(self, text: str) -> None:
        """Append request-supplied text."""
        self.add(text, trusted=False)

    def extend(self, other: "Prompt") -> None:
        self.segments.extend(other.segments)

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.segments)

    def trusted_spans(self) -> list[tuple[int, int]]:
        """Character ranges `[start, end)` of trusted text, in order."""
        spans: list[tuple[int, int]] = []
        pos = 0
        for text, trusted in self.segments:
            if trusted and spans and spans[-1][1] == pos:
                spans[-1] = (spans[-1][0], pos + len(text))  # adjacent: one span, so no marker is cut
            elif trusted:
                spans.append((pos, pos + len(text)))
            pos += len(text)
        return spans

    @property
    def opens_reasoning(self) -> bool:
        """True iff the prompt ends with our `<think>`: generation starts in reasoning.

        Derive the parser's start state from this, never from request flags
        (spec §2.11: the #1 bug class is the two disagreeing).
        """
        return bool(self.segments) and self.segments[-1][1] and self.segments[-1][0].endswith(tokens.THINK)
