"""Property-based fuzzing of every HTTP endpoint from the server's own OpenAPI document (schemathesis over
hypothesis): bodies that fit the schema (positive) and bodies that break it (negative), on a tiny random model with
the real tokenizer's vocabulary and a 2-token output cap, so generation stays cheap. Checks per answer: below 500;
an error (4xx) is JSON in its API's shape (OpenAI's on /v1/chat/completions, /v1/completions, /v1/responses...,
Anthropic's on /v1/messages*); a 2xx is JSON or well-formed SSE; and the server still answers /health after each
operation. Prints a table per operation, writes benchmarks/results/fuzz_server.json.

    python benchmarks/fuzz_server.py --examples 300    # tests/test_server_fuzz.py runs the same with a few dozen
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as with_seed
from hypothesis.errors import Unsatisfiable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "fuzz_server.json"
MODES = ("positive", "negative")


@dataclass
class OperationResult:
    """One operation in one generation mode: cases sent, statuses by class, and the failures found."""

    operation: str
    mode: str
    cases: int = 0
    statuses: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


def answer_problem(path: str, status: int, content_type: str, body: bytes, doc: dict) -> str | None:
    """What is wrong with one answer, or None: a 5xx, an error body not in the API's shape (the document's
    OpenAIError or AnthropicError schema), a 2xx body that is neither JSON nor SSE of JSON events."""
    text = body.decode("utf-8", "replace")
    if status >= 500:
        return f"{status}: {text[:300]}"
    try:
        if status >= 400:
            shape = "AnthropicError" if path.removeprefix("/v1").startswith("/messages") else "OpenAIError"
            try:
                jsonschema.validate(json.loads(body), doc["components"]["schemas"][shape])
            except jsonschema.ValidationError as e:
                return f"{status} not in the {shape} shape: {e.message[:200]}; body {text[:200]}"
        elif content_type.startswith("text/event-stream"):
            for line in re.split(r"\r\n|\r|\n", text):  # SSE's line ends only: str.splitlines also cuts at \x85
                if line.startswith("data: ") and line != "data: [DONE]":
                    json.loads(line[6:])
        elif content_type.startswith("application/json"):
            json.loads(body)
    except ValueError as e:
        return f"{status} {content_type} body not JSON ({e}): {text[:200]}"
    return None


def fuzz_operation(url: str, doc: dict, operation, mode: str, examples: int, seed: int) -> OperationResult:
    """`examples` generated cases of one operation; every failure is recorded (the run goes on)."""
    from schemathesis import GenerationMode

    result = OperationResult(f"{operation.method.upper()} {operation.path}", mode)
    session = requests.Session()
    strategy = operation.as_strategy(generation_mode=GenerationMode(mode))

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def one(case):
        try:
            response = case.call(base_url=url, session=session, timeout=60)
        except requests.RequestException as e:  # the server closed on us, or hung
            result.failures.append(f"no answer ({type(e).__name__}: {e}) to {_describe(case)}")
            return
        result.cases += 1
        result.statuses[f"{response.status_code // 100}xx"] += 1
        kind = (response.headers.get("content-type") or [""])[0]
        problem = answer_problem(operation.path, response.status_code, kind, response.content, doc)
        if problem is not None:
            result.failures.append(f"{problem} <- {_describe(case)}")

    start = time.perf_counter()
    try:
        with_seed(seed)(one)()
    except Unsatisfiable:  # nothing to break: an operation without parameters or body has no negative cases
        pass
    result.seconds = time.perf_counter() - start
    return result


def _describe(case) -> str:
    body = json.dumps(case.body, default=str)[:300] if case.body is not None else ""
    return f"{case.method} {case.formatted_path} {body}"


def fuzz(url: str, examples: int, seed: int = 0, modes: tuple[str, ...] = MODES) -> list[OperationResult]:
    """Every operation of `url`'s /openapi.json in each mode; after each, the server must still be healthy."""
    import schemathesis

    doc = requests.get(f"{url}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(doc)
    results = []
    for op in schema.get_all_operations():
        operation = op.ok()
        for mode in modes:
            result = fuzz_operation(url, doc, operation, mode, examples, seed)
            health = requests.get(f"{url}/health", timeout=30)
            if health.status_code != 200:
                result.failures.append(f"/health answered {health.status_code} after this operation")
            results.append(result)
    return results


def table(results: list[OperationResult]) -> str:
    rows = [("operation", "mode", "cases", "2xx", "4xx", "5xx", "failures", "s")]
    rows += [(r.operation, r.mode, str(r.cases), str(r.statuses["2xx"]), str(r.statuses["4xx"]),
              str(r.statuses["5xx"]), str(len(r.failures)), f"{r.seconds:.1f}") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=300, help="cases per operation and mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import random_model

    from dsv4.server.run import BackgroundServer, make_state

    torch.set_num_threads(1)
    model = random_model(vocab_size=129280, max_position_embeddings=256, num_hash_layers=0, seed=0)
    start = time.perf_counter()
    with BackgroundServer(make_state(model, model_name="tiny", max_output_tokens=2)) as server:
        results = fuzz(server.url, args.examples, args.seed)
    wall = time.perf_counter() - start
    print(table(results))
    failures = [f"{r.operation} ({r.mode}): {f}" for r in results for f in r.failures]
    for line in failures[:50]:
        print("FAIL", line)
    total = sum(r.cases for r in results)
    print(f"{total} cases in {wall:.0f} s, {len(failures)} failures")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": f"python benchmarks/fuzz_server.py --examples {args.examples} --seed {args.seed}",
        "model": "tiny random (vocab 129280, context 256), max_output_tokens 2", "cases": total,
        "seconds": round(wall, 1), "failures": failures,
        "operations": [{"operation": r.operation, "mode": r.mode, "cases": r.cases, "statuses": dict(r.statuses),
                        "failures": len(r.failures), "seconds": round(r.seconds, 1)} for r in results]}, indent=2))
    print(f"wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
