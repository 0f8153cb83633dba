"""The engine in a background thread: callers submit and cancel from any thread; events come back by callback.

Callers never wait for a step: `submit` and `cancel` only touch a small inbox under a lock that a running step
never holds; the engine thread applies the inbox between steps. The server wraps the callback with
`loop.call_soon_threadsafe` to feed one asyncio queue per request.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from dsv4.engine.engine import Engine
from dsv4.engine.errors import QueueFullError
from dsv4.engine.params import SamplingParams
from dsv4.engine.sequence import Sequence, TokenEvent

Listener = Callable[[TokenEvent], None]
log = logging.getLogger(__name__)


class EngineLoop:
    """Owns the engine's thread. `submit` raises the engine's request errors (queue full, context) at once."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._lock = threading.Condition()  # guards the inbox and listeners; never held during a step
        self._adds: list[Sequence] = []
        self._cancels: list[int] = []
        self._listeners: dict[int, Listener] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="dsv4-engine", daemon=True)
        self._thread.start()

    def submit(self, prompt: list[int], params: SamplingParams, listener: Listener,
               in_reasoning: bool = False) -> Sequence:
        seq = self.engine.new_sequence(prompt, params, in_reasoning)
        with self._lock:
            limit = self.engine.config.max_waiting
            if self.engine.scheduler.queue_depth + len(self._adds) >= limit:
                raise QueueFullError(limit)
            self._adds.append(seq)
            self._listeners[seq.seq_id] = listener
            self._lock.notify()
        return seq

    def cancel(self, seq_id: int) -> None:
        """Stop a sequence and free its memory before the next step; its listener hears nothing more."""
        with self._lock:
            self._listeners.pop(seq_id, None)
            self._cancels.append(seq_id)
            self._lock.notify()

    @property
    def queue_depth(self) -> int:
        return self.engine.scheduler.queue_depth + len(self._adds)

    @property
    def running(self) -> int:
        return len(self.engine.scheduler.running)

    def close(self) -> None:
        """Stop the engine thread, then wait for the prefix cache's pending disk writes."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        self._thread.join()
        if self.engine.prefix is not None:
            self.engine.prefix.flush()

    def _run(self) -> None:
        while self._take_inbox():
            events = self._step() if self.engine.has_work() else []
            with self._lock:
                targets = [(self._listeners.get(e.seq_id), e) for e in events]
                for e in events:
                    if e.finish_reason is not None:
                        self._listeners.pop(e.seq_id, None)
            for listener, event in targets:
                if listener is not None:
                    listener(event)

    def _take_inbox(self) -> bool:
        """Wait for work; queue new sequences and apply cancellations. False when closing."""
        with self._lock:
            while not (self._stopping or self._adds or self._cancels or self.engine.has_work()):
                self._lock.wait()
            if self._stopping:
                return False
            for seq in self._adds:
                self.engine.enqueue(seq)
            cancels, self._adds, self._cancels = self._cancels, [], []
        for seq_id in cancels:
            self.engine.cancel(seq_id)
        return True

    def _step(self) -> list[TokenEvent]:
        """One engine step; if it fails, the requests it was running (their caches may be half written) end with
        finish_reason "error", the waiting ones still run, and the thread lives."""
        try:
            return self.engine.step()
        except Exception:  # a bug in one step must not kill the worker that serves everyone else
            log.exception("engine step failed; ending the requests it was running")
            ids = [seq.seq_id for seq in self.engine.scheduler.running]
            for seq_id in ids:
                self.engine.cancel(seq_id)
            return [TokenEvent(seq_id, None, finish_reason="error") for seq_id in ids]
