"""Soak: `dsv4 serve` (the demo model, in its own process so RSS is the server's alone) under 32 concurrent
streaming clients for `--minutes` (default 10), across chat completions, Messages and Responses, with random
cancellations and disconnects mid-stream, oversize bodies and too-long prompts mixed in.

Checks: no 5xx; every deterministic request (temperature 0, or seeded) streams exactly the text the same request
gave when run alone, recorded before the load starts; the server's RSS (VmRSS) after warm-up grows less than 5%.
Prints a line per interval and a result table; writes benchmarks/results/soak_server.json.

    python benchmarks/soak_server.py --minutes 10
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "soak_server.json"
sys.path.insert(0, str(ROOT / "tests"))
from server_process import free_port, start_server  # noqa: E402
MAX_BODY = 1_000_000  # --max-body-bytes: oversize requests are cheap to send
MAX_TOKENS = 16
PROMPTS = ["Hi there", "What is the capital of France?", "Write a haiku about rust.", "Count from one to ten.",
           "Explain recursion briefly.", "Name three prime numbers.", "Translate 'good morning' to German.",
           "What does HTTP stand for?"]
APIS = ("chat", "messages", "responses")
KINDS = {"reference": 0.55, "cancel": 0.15, "disconnect": 0.1, "oversize": 0.1, "too_long": 0.1}


def body(api: str, prompt: str, seed: int | None) -> dict:
    """A streamed request; deterministic: temperature 0, or (chat) a seed at temperature 0.8."""
    messages = [{"role": "user", "content": prompt}]
    if api == "chat":
        sampling = {"temperature": 0.8, "seed": seed} if seed is not None else {"temperature": 0}
        return {"model": "demo", "messages": messages, "max_tokens": MAX_TOKENS, "stream": True, **sampling}
    if api == "messages":
        return {"model": "demo", "messages": messages, "max_tokens": MAX_TOKENS, "stream": True, "temperature": 0,
                "thinking": {"type": "enabled", "budget_tokens": 8}}
    return {"model": "demo", "input": prompt, "max_output_tokens": MAX_TOKENS, "stream": True, "temperature": 0,
            "store": False}


PATHS = {"chat": "/v1/chat/completions", "messages": "/v1/messages", "responses": "/v1/responses"}


def text_of(api: str, event: dict) -> str:
    """The generated text (reasoning and answer) one SSE event carries."""
    if api == "chat":
        delta = (event.get("choices") or [{}])[0].get("delta") or {}
        return (delta.get("reasoning_content") or "") + (delta.get("content") or "")
    if api == "messages":
        delta = event.get("delta") or {} if event.get("type") == "content_block_delta" else {}
        return delta.get("thinking", "") + delta.get("text", "")
    kind = event.get("type", "")
    return event["delta"] if kind.endswith(".delta") and isinstance(event.get("delta"), str) else ""


async def stream(client: httpx.AsyncClient, api: str, request: dict, stop_after: int | None = None
                 ) -> tuple[int, str]:
    """(status, streamed text); `stop_after` events: the client walks away (the connection is closed)."""
    async with client.stream("POST", PATHS[api], json=request) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code, r.text
        text, events = [], 0
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            text.append(text_of(api, json.loads(line[6:])))
            events += 1
            if stop_after is not None and events >= stop_after:
                return -1, "".join(text)
        return 200, "".join(text)


class Soak:
    def __init__(self, url: str, references: dict, seconds: float, rng: random.Random):
        self.url, self.references, self.deadline, self.rng = url, references, time.monotonic() + seconds, rng
        self.counts: Counter = Counter()
        self.mismatches: list[str] = []
        self.errors: list[str] = []

    async def client(self, index: int) -> None:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=self.url, timeout=600, limits=limits) as client:
            while time.monotonic() < self.deadline:
                kind = self.rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
                try:
                    await self.one(client, kind)
                except (httpx.HTTPError, OSError) as e:
                    self.counts[f"{kind}: transport error"] += 1
                    self.errors.append(f"{kind}: {type(e).__name__}: {e}")

    async def one(self, client: httpx.AsyncClient, kind: str) -> None:
        key = self.rng.choice(list(self.references))
        api, prompt, seed = key
        request = body(api, prompt, seed)
        if kind == "reference":
            status, text = await stream(client, api, request)
            ok = status == 200 and text == self.references[key]
            if status == 200 and not ok:
                self.mismatches.append(f"{key}: {text!r} != alone {self.references[key]!r}")
        elif kind in ("cancel", "disconnect"):
            # cancel: the client stops after a few events; disconnect: the task is cancelled mid-read
            if kind == "cancel":
                status, _ = await stream(client, api, request, stop_after=self.rng.randint(1, 6))
            else:
                task = asyncio.ensure_future(stream(client, api, request))
                await asyncio.sleep(self.rng.uniform(0.05, 1.0))
                task.cancel()
                status = await asyncio.gather(task, return_exceptions=True)
                status = -1 if isinstance(status[0], BaseException) else status[0][0]
            ok = status in (-1, 200)
        elif kind == "oversize":
            request["padding"] = "x" * (MAX_BODY + 1000)
            status, text = await stream(client, api, request)
            ok = status == 413
        else:  # too long for the context, within the body limit
            long = " ".join(f"w{i}" for i in range(40_000))
            request = body(api, long, seed)
            status, text = await stream(client, api, request)
            ok = status in (400, 413) and "context" in text  # Anthropic answers 400, OpenAI 413
        self.counts[f"{kind} {'ok' if ok else 'FAILED'}"] += 1
        self.counts[f"status {status // 100}xx" if status > 0 else "closed by the client mid-stream"] += 1
        if not ok and kind != "reference":
            self.errors.append(f"{kind} {api}: status {status}")


def answered(counts: Counter | dict) -> int:
    """Requests done, whatever their kind and outcome."""
    return sum(n for k, n in counts.items() if k.endswith((" ok", " FAILED")))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def launch(port: int, responses_dir: str) -> subprocess.Popen:
    return start_server(["--model-name", "demo", "--max-body-bytes", str(MAX_BODY), "--responses-dir", responses_dir,
                         "--max-running", "16"], port)


async def record_references(url: str) -> dict:
    """Every deterministic request once, alone: the answers the soak must reproduce."""
    references = {}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for api in APIS:
            for prompt in PROMPTS:
                for seed in ((None, 7) if api == "chat" else (None,)):
                    status, text = await stream(client, api, body(api, prompt, seed))
                    if status != 200:
                        raise RuntimeError(f"reference {api} {prompt!r}: status {status}: {text[:300]}")
                    references[(api, prompt, seed)] = text
    return references


async def soak(url: str, pid: int, minutes: float, clients: int, seed: int) -> dict:
    references = await record_references(url)
    rng = random.Random(seed)
    run = Soak(url, references, minutes * 60, rng)
    samples: list[tuple[float, int]] = []
    start = time.monotonic()

    async def sample() -> None:
        while time.monotonic() < run.deadline:
            samples.append((time.monotonic() - start, rss_kib(pid)))
            done = answered(run.counts)
            print(f"t={samples[-1][0]:6.0f}s  rss={samples[-1][1] / 1024:7.1f} MiB  requests={done}  "
                  f"mismatches={len(run.mismatches)}  5xx={run.counts['status 5xx']}", flush=True)
            await asyncio.sleep(10)

    await asyncio.gather(sample(), *(run.client(i) for i in range(clients)))
    live = await drained(url)
    samples.append((time.monotonic() - start, rss_kib(pid)))
    return {"counts": dict(run.counts), "mismatches": run.mismatches, "errors": run.errors[:50],
            "references": len(references), "live_sequences_after": live, "rss_samples": samples}


async def drained(url: str, wait_s: float = 30.0) -> int:
    """Sequences still running or queued `wait_s` after the last client left (cancelled ones must be freed)."""
    deadline = time.monotonic() + wait_s
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while True:
            text = (await client.get("/metrics")).text
            live = sum(int(float(line.split()[1])) for line in text.splitlines()
                       if line.startswith(("dsv4_running_sequences ", "dsv4_queue_depth ")))
            if live == 0 or time.monotonic() > deadline:
                return live
            await asyncio.sleep(0.5)


def summary(result: dict, minutes: float, clients: int) -> dict:
    samples = result["rss_samples"]
    warm = next(i for i, (t, _) in enumerate(samples) if t >= min(60.0, samples[-1][0] / 5))  # after warm-up
    after = [kib for _, kib in samples[warm:]]
    tail = after[-max(1, len(after) // 10):]
    growth = (statistics.median(tail) - after[0]) / after[0]
    counts = result["counts"]
    requests = answered(counts)
    return {"minutes": minutes, "clients": clients, "requests": requests,
            "fivexx": counts.get("status 5xx", 0), "mismatches": len(result["mismatches"]),
            "reference_checked": counts.get("reference ok", 0) + counts.get("reference FAILED", 0),
            "rss_warm_mib": round(after[0] / 1024, 1), "rss_end_mib": round(statistics.median(tail) / 1024, 1),
            "rss_max_mib": round(max(after) / 1024, 1), "rss_growth_pct": round(100 * growth, 2),
            "live_sequences_after": result["live_sequences_after"],
            "passed": (counts.get("status 5xx", 0) == 0 and not result["mismatches"] and growth < 0.05
                       and result["live_sequences_after"] == 0)}


def table(s: dict, counts: dict) -> str:
    rows = [("clients x minutes", f"{s['clients']} x {s['minutes']:g}"), ("requests", str(s["requests"])),
            ("5xx answers", str(s["fivexx"])),
            ("deterministic streams checked / differing from alone", f"{s['reference_checked']} / {s['mismatches']}")]
    rows += [(k, str(v)) for k, v in sorted(counts.items()) if not k.startswith("reference")]
    rows += [("RSS after warm-up -> end (max), MiB", f"{s['rss_warm_mib']} -> {s['rss_end_mib']} ({s['rss_max_mib']})"),
             ("RSS growth after warm-up", f"{s['rss_growth_pct']}% (limit 5%)"),
             ("sequences still live after the clients left", str(s["live_sequences_after"])),
             ("passed", "yes" if s["passed"] else "NO")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as responses_dir:
        proc = launch(port, responses_dir)
        try:
            result = asyncio.run(soak(f"http://127.0.0.1:{port}", proc.pid, args.minutes, args.clients, args.seed))
        finally:
            proc.terminate()
            stderr = proc.communicate(timeout=60)[1]
    tracebacks = stderr.count("Traceback")
    s = {**summary(result, args.minutes, args.clients), "server_tracebacks": tracebacks}
    s["passed"] = s["passed"] and tracebacks == 0
    print(table(s, result["counts"]))
    print(f"server tracebacks in its log: {tracebacks}")
    for line in result["mismatches"][:10] + result["errors"][:10]:
        print("  ", line[:300])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": f"python benchmarks/soak_server.py --minutes {args.minutes:g} --clients {args.clients}",
        "cpu_count": os.cpu_count(), "summary": s, **result}, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0 if s["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
