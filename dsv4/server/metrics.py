"""Prometheus metrics in the text exposition format, without a client library: counters, gauges, histograms;
plus the engine's prefix-cache counters (hits, misses, tokens prefilled vs taken from the cache, bytes and entries
per tier), and the expert cache's counters when the model offloads experts (bytes per token: rate of
dsv4_expert_bytes_read_total over the rate of the token counters)."""
from __future__ import annotations

import threading
from collections import defaultdict

from dsv4.engine.prefix_cache import PrefixStats
from dsv4.offload import OffloadStats

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = _LATENCY_BUCKETS):
        self.buckets, self.counts, self.sum, self.count = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, value: float) -> None:
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{edge}"}} {n}' for edge, n in zip(self.buckets, self.counts)]
        return out + [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum}", f"{name}_count {self.count}"]


class Metrics:
    """Request counts by route and status, token counts, latency histograms; gauges are read at scrape time."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.prompt_tokens = self.generation_tokens = self.cached_tokens = 0
        self.ttft, self.itl = Histogram(), Histogram()

    def request(self, route: str, status: int) -> None:
        with self._lock:
            self.requests[(route, status)] += 1

    def tokens(self, prompt: int = 0, generated: int = 0, cached: int = 0) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.generation_tokens += generated
            self.cached_tokens += cached

    def latency(self, ttft: float | None = None, itl: float | None = None) -> None:
        with self._lock:
            if ttft is not None:
                self.ttft.observe(ttft)
            if itl is not None:
                self.itl.observe(itl)

    def render(self, gauges: dict[str, float], experts: OffloadStats | None = None,
               prefix: PrefixStats | None = None) -> str:
        """The exposition text; `gauges`: name -> current value (queue depth, running sequences, ...); `experts`:
        the expert store's counters of an offloaded model; `prefix`: the engine's prefix-cache counters."""
        with self._lock:
            lines = ["# TYPE dsv4_requests_total counter"]
            lines += [f'dsv4_requests_total{{route="{r}",status="{s}"}} {n}' for (r, s), n in sorted(self.requests.items())]
            for name, value in (("prompt_tokens", self.prompt_tokens), ("generation_tokens", self.generation_tokens),
                                ("cached_prompt_tokens", self.cached_tokens)):
                lines += [f"# TYPE dsv4_{name}_total counter", f"dsv4_{name}_total {value}"]
            for name, hist in (("time_to_first_token_seconds", self.ttft), ("inter_token_latency_seconds", self.itl)):
                lines += [f"# TYPE dsv4_{name} histogram", *hist.lines(f"dsv4_{name}")]
        if prefix is not None:
            lines += prefix_lines(prefix)
        if experts is not None:
            lines += expert_lines(experts)
        for name, value in gauges.items():
            lines += [f"# TYPE dsv4_{name} gauge", f"dsv4_{name} {value}"]
        return "\n".join(lines) + "\n"


_EXPERT_COUNTERS = {"lookups": "expert_cache_lookups", "hits": "expert_cache_hits", "misses": "expert_cache_misses",
                    "evictions": "expert_cache_evictions", "bytes_read": "expert_bytes_read",
                    "read_seconds": "expert_read_seconds", "build_seconds": "expert_build_seconds",
                    "wait_seconds": "expert_wait_seconds"}
_EXPERT_GAUGES = {"resident_bytes": "expert_cache_bytes", "budget": "expert_cache_budget_bytes",
                  "hit_rate": "expert_cache_hit_rate"}


def expert_lines(stats: OffloadStats) -> list[str]:
    """Counters (`_total`) and gauges of the expert store."""
    d, lines = stats.as_dict(), []
    for key, name in _EXPERT_COUNTERS.items():
        lines += [f"# TYPE dsv4_{name}_total counter", f"dsv4_{name}_total {d[key]}"]
    for key, name in _EXPERT_GAUGES.items():
        lines += [f"# TYPE dsv4_{name} gauge", f"dsv4_{name} {d[key]}"]
    return lines


_PREFIX_COUNTERS = {"hits": "prefix_cache_hits", "misses": "prefix_cache_misses", "disk_hits": "prefix_cache_disk_hits",
                    "prefilled_tokens": "prefilled_tokens", "cached_tokens": "prefix_cache_cached_tokens",
                    "disk_writes": "prefix_cache_disk_writes", "disk_rejected": "prefix_cache_disk_rejected",
                    "disk_dropped": "prefix_cache_disk_dropped"}


def prefix_lines(stats: PrefixStats) -> list[str]:
    """Counters (`_total`) of prefix reuse, and per tier (memory, disk) gauges of its bytes and entries."""
    lines = []
    for key, name in _PREFIX_COUNTERS.items():
        lines += [f"# TYPE dsv4_{name}_total counter", f"dsv4_{name}_total {getattr(stats, key)}"]
    for what in ("bytes", "entries"):
        lines.append(f"# TYPE dsv4_prefix_cache_{what} gauge")
        lines += [f'dsv4_prefix_cache_{what}{{tier="{tier}"}} {getattr(stats, f"{tier}_{what}")}'
                  for tier in ("memory", "disk")]
    return lines
