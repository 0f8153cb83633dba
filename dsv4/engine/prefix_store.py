"""The prefix cache's disk tier: one safetensors file per cached token prefix, kept across restarts.

A file holds row 0 of a batch-1 `ModelCache` by name (`layers.{i}.window`, `layers.{i}.compressor.cur_kv`, ...,
`mtp.{j}...`; compressed entries only up to pos // m) plus the key's token ids (`tokens` [L]); its metadata says
the format and version, the model's identity (`model_identity`), the lookahead, the token count and the sha256
of the tokens. Files are written by a background thread (the engine never waits on the disk) to a temporary name
and renamed, so a crash leaves no partial file under a final name. The directory is bounded by a byte budget
(segmented LRU by last use, as the memory tier); hit counts and last-use times live in `index.json`.

On start-up, temporary files whose writer process is gone (killed mid-write) are removed, and the files' headers
are read; files of another model, lookahead or format version, and malformed ones, are ignored with a warning, as
is a file whose data turns out unusable when loaded (the lookup is then a miss).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from dsv4.cache import CompressorCache, ModelCache
from dsv4.engine.prefix_cache import SegmentedLRU
from dsv4.weights.atomic import remove_stale

FORMAT, VERSION = "dsv4-prefix-cache", 1
INDEX = "index.json"
SUFFIX = ".safetensors"
QUEUE_SIZE = 4  # pending jobs; a write beyond is dropped (counted; the entry stays in memory): the engine never
                # waits on the disk
_STATE_FIELDS = ("cur_kv", "cur_score", "prev_kv", "prev_score")
_STORE_NAMES = {"plain": ("entries",), "fp8": ("entries.codes", "entries.exponents", "entries.rope"),
                "fp4": ("entries.codes", "entries.exponents")}  # entry storage tensors by format (dsv4.cache)
_TEMPORARY = re.compile(r"\..+\.(?P<pid>\d+)\.\d+\.tmp")  # _write_atomic's names: .NAME.PID.THREAD.tmp


def model_identity(model: torch.nn.Module, sample_bytes: int = 4096) -> str:
    """A hash of the config, the activation dtype and, per parameter and buffer, its name, shape, dtype and first
    `sample_bytes` bytes: cheap on a 100+ GB model, and different for other weights, dtypes or quantisations."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(model.cfg), sort_keys=True, default=str).encode())
    h.update(str(getattr(model, "dtype", "")).encode())
    for name, t in chain(model.named_parameters(), model.named_buffers()):
        h.update(f"|{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        if t.numel() and t.device.type != "meta":
            head = t.detach().reshape(-1)[:max(1, sample_bytes // t.element_size())]
            h.update(head.contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def token_hash(tokens) -> str:
    """sha256 of token ids as little-endian int64."""
    return hashlib.sha256(np.asarray(tokens, dtype="<i8").tobytes()).hexdigest()


def _named(cache: ModelCache) -> Iterator[tuple[str, torch.Tensor, CompressorCache | None]]:
    """(name, tensor, its compressor if the tensor is entry storage) for every tensor of the cache."""
    for group, layers in (("layers", cache.layers), ("mtp", cache.mtp)):
        for i, layer in enumerate(layers):
            yield f"{group}.{i}.window", layer.window, None
            for part, comp in (("compressor", layer.compressor), ("indexer", layer.indexer)):
                if comp is not None:
                    yield from ((f"{group}.{i}.{part}.{field}", getattr(comp, field), None)
                                for field in _STATE_FIELDS if getattr(comp, field) is not None)
                    for suffix, t in zip(_STORE_NAMES[comp.fmt.kind], comp.store, strict=True):
                        yield f"{group}.{i}.{part}.{suffix}", t, comp


def cache_tensors(cache: ModelCache) -> dict[str, torch.Tensor]:
    """A batch-1 cache's tensors by name: rings and compressor states whole, entries [1, pos // m, D] (views)."""
    pos = int(cache.pos[0])
    return {name: t[:, :pos // comp.ratio] if comp else t for name, t, comp in _named(cache)}


class RejectedFile(ValueError):
    """A cache file this engine cannot use; the message says why."""


@dataclass
class _Record:
    key_hash: tuple[int, str]  # (token count, sha256 of the tokens)
    used: float  # last use, seconds since the epoch


class PrefixStore:
    """Cache files in `directory` under `max_bytes`, for one model (`identity`) and lookahead. `make_cache()`
    gives an empty batch-1 cache of the model's layout (loaded files are copied into one). Thread-safe: the engine
    thread looks up and loads, a writer thread writes, evicts and saves the index."""

    def __init__(self, directory: str | Path, max_bytes: int, identity: str, lookahead: int,
                 make_cache: Callable[[], ModelCache]):
        self.dir, self.max_bytes, self.identity, self.lookahead = Path(directory), max_bytes, identity, lookahead
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"prefix cache directory {self.dir}: cannot create it ({e})") from None
        self._make_cache, self._template = make_cache, make_cache()
        self._lock, self._thread_lock = threading.Lock(), threading.Lock()
        self._queue: queue.Queue = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._lru = SegmentedLRU(max_bytes)  # file name -> file size
        self._records: dict[str, _Record] = {}
        self._by_hash: dict[tuple[int, str], str] = {}
        self._pending: set[str] = set()
        self._index_queued = False
        self.writes = self.rejected = self.dropped = 0
        self._scan()

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, key: tuple[int, ...]) -> bool:
        return (len(key), token_hash(key)) in self._by_hash

    @property
    def nbytes(self) -> int:
        return self._lru.nbytes

    def file_name(self, key_hash: tuple[int, str]) -> str:
        return hashlib.sha256(f"{self.identity}:{self.lookahead}:{key_hash[1]}".encode()).hexdigest()[:40] + SUFFIX

    # ---- the engine thread ----

    def put(self, key: tuple[int, ...], cache: ModelCache) -> None:
        """Write `cache` (whose positions hold key[:len(key) - lookahead]; never modified again) in the background."""
        key_hash = (len(key), token_hash(key))
        name = self.file_name(key_hash)
        with self._lock:
            if name in self._records or name in self._pending or cache.nbytes() > self.max_bytes:
                return
            self._pending.add(name)
        if not self._submit(partial(self._write, name, key, key_hash, cache)):
            with self._lock:
                self._pending.discard(name)
                self.dropped += 1

    def longest(self, prompt: list[int], longer_than: int = 0) -> tuple[int, ...] | None:
        """The longest stored key of more than `longer_than` tokens that is a prefix of `prompt` and leaves at
        least one prompt token to feed; None if there is none."""
        limit = min(len(prompt), len(prompt) - 1 + self.lookahead)
        with self._lock:
            lengths = sorted({n for n, _ in self._by_hash if longer_than < n <= limit})
            stored = set(self._by_hash)
        h, done, best = hashlib.sha256(), 0, None
        for n in lengths:  # one pass over the prompt: hash each candidate length's prefix incrementally
            h.update(np.asarray(prompt[done:n], dtype="<i8").tobytes())
            done = n
            if (n, h.copy().hexdigest()) in stored:
                best = n
        return None if best is None else tuple(prompt[:best])

    def load(self, key: tuple[int, ...]) -> ModelCache | None:
        """The stored cache for `key`, built on `make_cache()`; None (with a warning) if its file is unusable."""
        with self._lock:
            name = self._by_hash.get((len(key), token_hash(key)))
        if name is None:
            return None
        try:
            return self._read(self.dir / name, key)
        except (RejectedFile, SafetensorError, OSError) as e:
            self._reject(name, e)
            with self._lock:
                if name in self._records:
                    self._forget(name)
            return None

    def hits(self, key: tuple[int, ...]) -> int:
        with self._lock:
            name = self._by_hash.get((len(key), token_hash(key)))
            return self._lru.hits.get(name, 0)

    def touch(self, key: tuple[int, ...]) -> None:
        """Count a hit on `key` (recency and protection); the index file is rewritten in the background."""
        with self._lock:
            name = self._by_hash.get((len(key), token_hash(key)))
            if name is None:
                return
            self._lru.touch(name)
            self._records[name].used = time.time()
            if self._index_queued:
                return
            self._index_queued = True
        if not self._submit(self._save_index):
            self._index_queued = False

    def flush(self) -> None:
        """Block until every queued write is on disk."""
        self._queue.join()

    # ---- the writer thread ----

    def _submit(self, job: Callable[[], None]) -> bool:
        """Queue a job for the writer thread (started on demand; it exits when idle). False if the queue is full."""
        with self._thread_lock:
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                return False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dsv4-prefix-store", daemon=True)
                self._thread.start()
        return True

    def _run(self) -> None:
        while True:
            with self._thread_lock:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    self._thread = None
                    return
            try:
                job()
            except Exception as e:  # a bug in a job must not stall every later write; say so loudly
                warnings.warn(f"prefix cache: background job failed ({type(e).__name__}: {e})", RuntimeWarning)
            finally:
                self._queue.task_done()

    def _write(self, name: str, key: tuple[int, ...], key_hash: tuple[int, str], cache: ModelCache) -> None:
        tensors = {n: t.contiguous().cpu() for n, t in cache_tensors(cache).items()}
        tensors["tokens"] = torch.tensor(key, dtype=torch.long)
        meta = {"format": FORMAT, "version": str(VERSION), "model": self.identity, "lookahead": str(self.lookahead),
                "tokens": str(len(key)), "sha256": key_hash[1]}
        try:
            size = _write_atomic(self.dir / name, lambda tmp: save_file(tensors, tmp, metadata=meta))
        except Exception as e:  # disk full, permissions...: the entry stays in memory only
            with self._lock:
                self._pending.discard(name)
            warnings.warn(f"prefix cache: could not write {self.dir / name} ({type(e).__name__}: {e})", RuntimeWarning)
            return
        with self._lock:
            self._pending.discard(name)
            self.writes += 1
            self._add(name, key_hash, size, hits=0, used=time.time())
        self._save_index()

    def _save_index(self) -> None:
        with self._lock:
            self._index_queued = False
            entries = {n: {"hits": self._lru.hits[n], "used": r.used} for n, r in self._records.items()}
        text = json.dumps({"version": VERSION, "entries": entries})
        _write_atomic(self.dir / INDEX, lambda tmp: Path(tmp).write_text(text))

    # ---- records (callers hold self._lock, except during __init__) ----

    def _add(self, name: str, key_hash: tuple[int, str], size: int, hits: int, used: float) -> None:
        self._records[name] = _Record(key_hash, used)
        self._by_hash[key_hash] = name
        for old in self._lru.add(name, size, hits):
            self._forget(old)
            (self.dir / old).unlink(missing_ok=True)

    def _forget(self, name: str) -> None:
        record = self._records.pop(name)
        del self._by_hash[record.key_hash]
        if name in self._lru:
            self._lru.remove(name)

    # ---- reading files ----

    def _scan(self) -> None:
        """Remove dead writers' temporary files; index the cache files (headers only), least recently used first."""
        remove_stale(self.dir, _TEMPORARY)
        try:
            index = json.loads((self.dir / INDEX).read_text())["entries"]
        except (OSError, ValueError, KeyError, TypeError):
            index = {}  # no index yet (or unreadable): every file starts unprotected, last used at its mtime
        found = []
        for path in sorted(self.dir.glob("*" + SUFFIX)):
            try:
                key_hash = self._check_header(path)
            except (RejectedFile, SafetensorError, OSError) as e:
                self._reject(path.name, e)
                continue
            info = index.get(path.name) if isinstance(index.get(path.name), dict) else {}
            stat = path.stat()
            found.append((float(info.get("used", stat.st_mtime)), path.name, key_hash, stat.st_size,
                          int(info.get("hits", 0))))
        for used, name, key_hash, size, hits in sorted(found):
            self._add(name, key_hash, size, hits, used)

    def _check_header(self, path: Path) -> tuple[int, str]:
        """Validate a file's metadata and tensor shapes against this model; return its (token count, sha256)."""
        with safe_open(path, framework="pt") as f:
            meta, shapes = f.metadata() or {}, {k: f.get_slice(k).get_shape() for k in f.keys()}
        if meta.get("format") != FORMAT:
            raise RejectedFile("not a dsv4 prefix cache file")
        if meta.get("version") != str(VERSION):
            raise RejectedFile(f"format version {meta.get('version')}, this dsv4 reads version {VERSION}")
        if meta.get("model") != self.identity:
            raise RejectedFile(f"written for another model (identity {meta.get('model')}, this one {self.identity})")
        if meta.get("lookahead") != str(self.lookahead):
            raise RejectedFile(f"written with lookahead {meta.get('lookahead')} (speculative decoding on/off), "
                               f"this engine uses {self.lookahead}")
        n, sha = int(meta.get("tokens", -1)), meta.get("sha256", "")
        if n <= self.lookahead or self.file_name((n, sha)) != path.name:
            raise RejectedFile(f"token count {n} and sha256 {sha!r} do not match the file's name")
        expected = {name: [1, (n - self.lookahead) // comp.ratio, t.shape[2]] if comp else list(t.shape)
                    for name, t, comp in _named(self._template)} | {"tokens": [n]}
        if shapes != expected:
            wrong = sorted(k for k in expected.keys() | shapes.keys() if shapes.get(k) != expected.get(k))
            raise RejectedFile(f"tensors differ from this model's cache layout: {', '.join(wrong[:4])}")
        return n, sha

    def _read(self, path: Path, key: tuple[int, ...]) -> ModelCache:
        cache = self._make_cache()
        cache.pos = torch.full_like(cache.pos, len(key) - self.lookahead)
        for *_, comp in _named(cache):
            if comp is not None:
                comp.ensure_capacity((len(key) - self.lookahead) // comp.ratio)
        with safe_open(path, framework="pt") as f:
            tokens = f.get_tensor("tokens")
            if token_hash(tokens.tolist()) != f.metadata().get("sha256") or tuple(tokens.tolist()) != key:
                raise RejectedFile("its token ids do not match its sha256 or the prompt")
            for name, dst in cache_tensors(cache).items():
                src = f.get_tensor(name)
                if src.shape != dst.shape or src.dtype != dst.dtype:
                    raise RejectedFile(f"{name}: expected {tuple(dst.shape)} {dst.dtype}, found "
                                       f"{tuple(src.shape)} {src.dtype}")
                dst.copy_(src)
        return cache

    def _reject(self, name: str, error: Exception) -> None:
        self.rejected += 1
        warnings.warn(f"prefix cache: ignoring {self.dir / name}: {error}", RuntimeWarning, stacklevel=3)


def _write_atomic(path: Path, write: Callable[[str], object]) -> int:
    """Write a file through `write(temporary path)` in the same directory, flush it to disk and rename it to
    `path`: readers see the old file or the whole new one, never part of it. Returns its size in bytes."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write(str(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path.stat().st_size
