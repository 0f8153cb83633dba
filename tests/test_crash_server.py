"""The real `dsv4 serve` process killed (SIGKILL) at random moments while it answers requests and writes its prefix
caches to disk: every restart starts, removes the dead writer's temporaries, loads only whole cache files, and
answers exactly as a server that never had a cache."""
import os
import random
import re
import signal
import threading
import time

import httpx
import pytest

from server_process import free_port, start_server, stop_server

PROMPTS = [f"{a} + {b} = ?" for a, b in [(12, 30), (45, 17), (8, 64), (23, 23), (71, 9), (36, 48)]]


def _ask(url: str, content: str) -> str | None:
    body = {"model": "dsv4-demo", "messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 40,
            "thinking": {"type": "disabled"}}
    try:
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
        return r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else None
    except httpx.HTTPError:
        return None  # the server was killed under this request


def _flood(url: str, prompts: list[str]) -> None:
    threads = [threading.Thread(target=_ask, args=(url, p), daemon=True) for p in prompts]
    for t in threads:
        t.start()


@pytest.fixture(scope="module")
def reference():
    """Every prompt's answer from a server without a prefix cache (no disk)."""
    port = free_port()
    proc = start_server(["--no-compile", "--prefix-cache-bytes", "0"], port)
    try:
        return {p: _ask(f"http://127.0.0.1:{port}", p) for p in PROMPTS}
    finally:
        stop_server(proc)


def test_a_server_killed_during_cache_writes_restarts_clean_and_answers_the_same(tmp_path, reference):
    cache_dir, rng = tmp_path / "prefix", random.Random(23)
    args = ["--no-compile", "--prefix-cache-dir", str(cache_dir)]
    for kill in range(3):
        port = free_port()
        proc = start_server(args, port)
        _flood(f"http://127.0.0.1:{port}", rng.sample(PROMPTS, 4))
        time.sleep(rng.uniform(0.05, 1.5))  # mid-request: prefills, answers and cache writes under way
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    port = free_port()
    proc = start_server(args, port)
    try:
        assert not list(cache_dir.rglob("*.tmp"))  # the dead writers' temporaries are gone
        answers = {p: _ask(f"http://127.0.0.1:{port}", p) for p in PROMPTS}
        again = {p: _ask(f"http://127.0.0.1:{port}", p) for p in PROMPTS}  # now from the disk/memory cache
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    finally:
        stop_server(proc)
    assert answers == reference and again == reference and all(reference.values())
    # the killed servers left whole cache files, and the restarted one answered from them
    disk_hits = re.search(r"^dsv4_prefix_cache_disk_hits_total (\d+)", metrics, re.M)
    assert disk_hits and int(disk_hits.group(1)) > 0, metrics
