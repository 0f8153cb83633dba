"""Training data: documents (token ids plus a loss mask) from text files or JSONL chat records, packed into rows.

A document's mask marks the tokens the model is trained to predict: every token of a text file, and in a chat
record only what the assistant writes (reasoning, answer, DSML tool calls, the closing EOS), never the prompt,
the user's words or tool results. Rows hold whole documents back to back (a document longer than a row is cut);
row r is split into inputs and targets by `lm_batch`.
"""
import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from dsv4.chat import Tokenizer, encode_messages_ids
from dsv4.train.checkpoint import load_checkpoint, save_checkpoint


class DataError(ValueError):
    """A data file or record that cannot be turned into training tokens."""


@dataclass
class Document:
    """ids: token ids; mask: 1 where the token is a training target (same length)."""

    ids: list[int]
    mask: list[int]


def text_document(text: str, tokenizer: Tokenizer) -> Document:
    """BOS + text + EOS, every token after BOS a target."""
    ids = [tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id]
    return Document(ids, [0] + [1] * (len(ids) - 1))


def chat_document(record: dict, tokenizer: Tokenizer) -> Document:
    """Render a chat record ({"messages", "thinking", "tools"}) with the chat layer; targets = assistant turns.

    The span of assistant message i is what rendering messages[:i+1] adds to rendering messages[:i] (which ends
    with the generation prompt); each rendering must extend the previous one token for token (see chat_documents
    for conversations whose renderings do not).
    """
    spans, restarts = _assistant_spans(record, tokenizer)
    if restarts:
        i = restarts[0]
        raise DataError(f"rendering of message {i} does not extend the conversation so far: {record['messages'][i]}")
    return _documents(spans, restarts)[0]


def _assistant_spans(record: dict, tokenizer: Tokenizer) -> tuple[list[tuple[int, list[int], list[int]]], list[int]]:
    """(every assistant message i with the renderings of messages[:i] and messages[:i+1], the messages i whose
    prompt does not extend the previous assistant message's rendering)."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(f"chat record needs a non-empty 'messages' list, found {str(record)[:80]!r}")
    options = {"thinking": bool(record.get("thinking", False)), "tools": record.get("tools"), "tokenizer": tokenizer}
    spans, restarts, ids = [], [], []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prompt = encode_messages_ids(messages[:i], **options)
        turn = encode_messages_ids(messages[:i + 1], **options)
        if turn[:len(prompt)] != prompt:
            raise DataError(f"rendering of message {i} does not extend its own prompt: {messages[i]}")
        if ids and prompt[:len(ids)] != ids:
            restarts.append(i)
        spans.append((i, prompt, turn))
        ids = turn
    if not spans:
        raise DataError(f"chat record has no assistant message: {str(record)[:80]!r}")
    return spans, restarts


def chat_documents(record: dict, tokenizer: Tokenizer) -> list[Document]:
    """The record's training documents: one while each assistant turn's rendering extends the conversation so far,
    a new one (its context rendered as the encoder renders it at that turn) where it does not.

    In thinking mode the encoder drops the reasoning of turns before the last user message, so each question of a
    multi-turn thinking conversation starts a document whose history shows earlier answers without reasoning and
    whose loss covers that turn only; chat and tool conversations stay one document."""
    return _documents(*_assistant_spans(record, tokenizer))


def _documents(spans: list[tuple[int, list[int], list[int]]], restarts: list[int]) -> list[Document]:
    docs: list[Document] = []
    ids: list[int] = []
    mask: list[int] = []
    for i, prompt, turn in spans:
        if i in restarts:
            docs.append(Document(ids, mask))
            ids, mask = [], []
        mask += [0] * (len(prompt) - len(ids)) + [1] * (len(turn) - len(prompt))
        ids = turn
    return [*docs, Document(ids, mask)]


def read_documents(path: str | Path, tokenizer: Tokenizer) -> list[Document]:
    """`.jsonl`: one chat record per line; any other file: one text document."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    if path.suffix != ".jsonl":
        return [text_document(path.read_text(encoding="utf-8"), tokenizer)]
    docs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                docs.extend(chat_documents(json.loads(line), tokenizer))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e})") from None
    return docs


def pack(docs: list[Document], row_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole documents back to back in rows of row_len tokens; a document that does not fit in what is left of
    a row starts the next one (padding, mask 0), one longer than a row is cut across rows.
    Returns (tokens [R, row_len] long, mask [R, row_len] float)."""
    rows: list[tuple[list[int], list[int]]] = [([], [])]
    for doc in docs:
        ids, mask = doc.ids, doc.mask
        if len(rows[-1][0]) + len(ids) > row_len and len(ids) <= row_len:
            rows.append(([], []))
        while ids:
            room = row_len - len(rows[-1][0])
            if room == 0:
                rows.append(([], []))
                continue
            rows[-1][0].extend(ids[:room])
            rows[-1][1].extend(mask[:room])
            ids, mask = ids[room:], mask[room:]
    rows = [row for row in rows if row[0]]
    tokens = torch.full((len(rows), row_len), pad_id, dtype=torch.long)
    weights = torch.zeros(len(rows), row_len)
    for r, (ids, mask) in enumerate(rows):
        tokens[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        weights[r, :len(mask)] = torch.tensor(mask, dtype=torch.float32)
    return tokens, weights


def batch_rows(step: int, batch_size: int, n_rows: int, seed: int) -> torch.Tensor:
    """Row indices of global batch `step` [batch_size]: epochs of seeded permutations laid end to end.

    A pure function of its arguments, so a resumed run sees exactly the batches it would have seen."""
    if n_rows < 1:
        raise DataError("no training rows: the data is empty")
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n_rows)
        perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.extend(perm[offset:offset + batch_size - len(out)].tolist())
    return torch.tensor(out, dtype=torch.long)


@dataclass
class PackedData:
    """Packed training and validation rows: tokens [R, seq_len + 2] long, mask [R, seq_len + 2] float."""

    train_tokens: torch.Tensor
    train_mask: torch.Tensor
    val_tokens: torch.Tensor
    val_mask: torch.Tensor

    def vocab_ids(self) -> list[int]:
        """Every token id that appears in the data (inputs or targets)."""
        return torch.cat([self.train_tokens.flatten(), self.val_tokens.flatten()]).unique().tolist()

    def fingerprint(self) -> str:
        """A digest of the packed training rows: a resumed run checks it sees the same data."""
        return hashlib.sha256(self.train_tokens.numpy().tobytes() + self.train_mask.numpy().tobytes()).hexdigest()


def prepare_data(paths: list[str], tokenizer: Tokenizer, seq_len: int, val_fraction: float,
                 seed: int, cache_dir: str | Path | None = None) -> PackedData:
    """Read every file, shuffle the documents with `seed`, hold out val_fraction of them, pack both parts.

    cache_dir: keep the packed rows there, keyed by the files' names, sizes and times and the arguments, so a
    resumed run skips rendering (a resume still checks the rows' fingerprint)."""
    if not paths:
        raise DataError("no data files given")
    if cache_dir is None:
        return _prepare(paths, tokenizer, seq_len, val_fraction, seed)
    stats = [(str(Path(p).resolve()), Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in paths]
    key = hashlib.sha256(json.dumps([stats, seq_len, val_fraction, seed]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"data-{key}.pt"
    if path.exists():
        return PackedData(**load_checkpoint(path)["data"])
    data = _prepare(paths, tokenizer, seq_len, val_fraction, seed)
    save_checkpoint({"data": dataclasses.asdict(data)}, path)  # atomic: data-parallel ranks may race here
    return data


def _prepare(paths: list[str], tokenizer: Tokenizer, seq_len: int, val_fraction: float, seed: int) -> PackedData:
    docs = [doc for path in paths for doc in read_documents(path, tokenizer)]
    random.Random(seed).shuffle(docs)
    n_val = int(len(docs) * val_fraction)
    train, val = pack(docs[n_val:], seq_len + 2, tokenizer.pad_id), pack(docs[:n_val], seq_len + 2, tokenizer.pad_id)
    return PackedData(*train, *val)
