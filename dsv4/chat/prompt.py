"""A rendered prompt that remembers which text is ours and which is the user's.

The string equals the reference encoder's output byte for byte. The split
matters only for tokenisation: control-token literals (`<｜User｜>`, `<think>`,
`｜DSML｜` ...) become control ids only inside *trusted* text (markers and
templates we write); inside *untrusted* text (anything taken from the request:
message content, reasoning, tool arguments and schemas) they are encoded as
ordinary BPE text, as the official DeepSeek API does (spec §1.3). With no such
literal in untrusted text the ids equal a plain encode of the whole string.

A segment may also carry fixed ids (`generated`): an earlier answer spliced in as the tokens the model produced,
so the prompt's ids match what the model saw (and what the prefix cache holds) even where re-encoding its text
would tokenise differently.
"""

from dataclasses import dataclass, field

from dsv4.chat import tokens


@dataclass
class Prompt:
    """Rendered prompt as `(text, trusted)` segments; `text` is their concatenation."""

    segments: list[tuple[str, bool]] = field(default_factory=list)
    fixed: dict[int, list[int]] = field(default_factory=dict)  # segment index -> its ids, as generated

    def add(self, text: str, *, trusted: bool) -> None:
        if text:
            self.segments.append((text, trusted))

    def mark(self, text: str) -> None:
        """Append our own markup (control tokens, templates)."""
        self.add(text, trusted=True)

    def user(self, text: str) -> None:
        """Append request-supplied text."""
        self.add(text, trusted=False)

    def generated(self, text: str, ids: list[int]) -> None:
        """Append model output given as its ids (`text` is their decoding)."""
        self.fixed[len(self.segments)] = list(ids)
        self.segments.append((text, False))

    def extend(self, other: "Prompt") -> None:
        self.fixed.update({len(self.segments) + i: ids for i, ids in other.fixed.items()})
        self.segments.extend(other.segments)

    def parts(self) -> list["Prompt | list[int]"]:
        """The prompt cut at its fixed segments: sub-prompts to encode, and fixed id lists, in order."""
        out: list[Prompt | list[int]] = []
        for i, segment in enumerate(self.segments):
            if i in self.fixed:
                out.append(self.fixed[i])
            elif out and isinstance(out[-1], Prompt):
                out[-1].segments.append(segment)
            else:
                out.append(Prompt([segment]))
        return out

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
