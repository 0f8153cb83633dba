"""Streaming detokenizer: ids in, text out, never half a UTF-8 character."""

import codecs

from dsv4.chat.tokenizer import Tokenizer


class StreamingDetokenizer:
    """Turn ids into text incrementally.

    Each `push` returns only complete characters; bytes of a character split
    across tokens wait for the rest. Concatenating every `push` and the final
    `flush` equals `tokenizer.decode(all_ids)`.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Feed one id; return the text it completes (possibly "")."""
        return self._decoder.decode(self._tokenizer.token_bytes(token_id))

    def push_many(self, token_ids: list[int]) -> str:
        return "".join(self.push(t) for t in token_ids)

    def flush(self) -> str:
        """End of stream: a dangling partial character becomes U+FFFD."""
        return self._decoder.decode(b"", final=True)
