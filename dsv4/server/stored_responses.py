"""Responses-API answers kept for `previous_response_id` and `GET /v1/responses/{id}` (`store: true`).

Each record is one JSON file `<id>.json` written atomically (temp file + rename), so a crash never leaves a half
record; the oldest records go first past `max_bytes`. Without a directory the records live in memory, under the
same bound. A file that no longer parses is skipped with a warning.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger(__name__)
_ID = re.compile(r"resp_[A-Za-z0-9]{1,64}")


class ResponseStore:
    """put/get/delete JSON records by response id, bounded by `max_bytes` (oldest first out)."""

    def __init__(self, directory: str | Path | None = None, max_bytes: int = 256 << 20):
        self.max_bytes = max_bytes
        self._dir = Path(directory) if directory is not None else None
        self._sizes: OrderedDict[str, int] = OrderedDict()  # id -> bytes, oldest first
        self._memory: dict[str, bytes] = {}
        self._lock = threading.Lock()
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
            files = sorted(self._dir.glob("resp_*.json"), key=lambda p: p.stat().st_mtime)
            for path in files:
                self._sizes[path.stem] = path.stat().st_size

    def put(self, rid: str, record: dict) -> None:
        data = json.dumps(record, ensure_ascii=False).encode("utf-8")
        with self._lock:
            if self._dir is None:
                self._memory[rid] = data
            else:
                tmp = self._dir / f".{rid}.tmp"
                tmp.write_bytes(data)
                os.replace(tmp, self._dir / f"{rid}.json")
            self._sizes[rid] = len(data)
            while sum(self._sizes.values()) > self.max_bytes and len(self._sizes) > 1:
                self._drop(next(iter(self._sizes)))

    def get(self, rid: str) -> dict | None:
        if not _ID.fullmatch(rid):
            return None
        with self._lock:
            if rid not in self._sizes:
                return None
            data = self._memory.get(rid) if self._dir is None else self._read(rid)
        try:
            return json.loads(data) if data is not None else None
        except ValueError:
            log.warning("stored response %s is unreadable; ignored", rid)
            return None

    def delete(self, rid: str) -> bool:
        with self._lock:
            if rid not in self._sizes:
                return False
            self._drop(rid)
            return True

    def _read(self, rid: str) -> bytes | None:
        try:
            return (self._dir / f"{rid}.json").read_bytes()
        except OSError:
            return None

    def _drop(self, rid: str) -> None:
        self._sizes.pop(rid, None)
        self._memory.pop(rid, None)
        if self._dir is not None:
            (self._dir / f"{rid}.json").unlink(missing_ok=True)
