"""`dsv4 serve` on 2 ranks (gloo, this CPU), tensor parallel started by `--tp 2` and data-parallel attention with
expert-parallel MoE (`--parallel dp-ep`) under torchrun, answers the OpenAI client exactly as one process does:
whole and streamed answers, a tool call, and 8 concurrent sampled requests (the demo model, converted to BF16 so
that its FP8 blocks do not have to split)."""
import sys
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from dsv4.cli import main
from dsv4.engine.model_path import DEMO_MODEL_DIR
from dsv4.train.calculator import CALCULATOR_TOOL
from server_process import free_port, start_server, stop_server

QUESTIONS = ["What is 58 + 27?", "Sort 5, 2, 9, 1.", "How many r are in strawberry?", "What is 7 * 8?",
             "What day is 3 days after Monday?", "What is 90 - 45?", "How many minutes is 2 hours?", "hi"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "bf16"
    assert main(["convert", str(DEMO_MODEL_DIR), str(path), "--recipe", "BF16"]) == 0
    return path


def _answers(port: int) -> dict:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)

    def ask(question, **kw):
        return client.chat.completions.create(model="demo", messages=[{"role": "user", "content": question}],
                                              max_tokens=120, **kw)

    whole = ask(QUESTIONS[0], temperature=0).choices[0].message
    stream = ask(QUESTIONS[1], temperature=0, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    tool = ask("Use the calculator: what is 123 * 45?", temperature=0, tools=[CALCULATOR_TOOL],
               extra_body={"thinking": {"type": "disabled"}}).choices[0].message
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda i: ask(QUESTIONS[i], temperature=0.8, seed=i).choices[0].message.content,
                                   range(8)))
    return {"whole": (whole.content, getattr(whole, "reasoning_content", None)), "streamed": streamed,
            "tool": [(c.function.name, c.function.arguments) for c in tool.tool_calls or []],
            "concurrent": concurrent}


def _run(launcher: list[str], model_dir, *flags: str, seen: list | None = None) -> dict:
    """The answers; `seen` gets what the started process runs (its command line, its child processes)."""
    port = free_port()
    proc = start_server(["--model", str(model_dir), "--no-compile", "--model-name", "demo", *flags], port, launcher)
    try:
        if seen is not None:
            seen.append(open(f"/proc/{proc.pid}/cmdline").read().split("\0"))
            seen.append(open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split())
        return _answers(port)
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def one_process(model_dir):
    one = _run([sys.executable], model_dir)
    assert one["tool"] and one["tool"][0][0] == "calculator"
    assert all(one["concurrent"]) and one["whole"][0] and one["streamed"]
    return one


def test_serve_tp_2_starts_two_ranks_that_serve_exactly_what_one_process_serves(model_dir, one_process):
    seen = []
    assert _run([sys.executable], model_dir, "--tp", "2", seen=seen) == one_process
    cmdline, children = seen
    assert "torch.distributed.run" in cmdline and cmdline[cmdline.index("--nproc-per-node") + 1] == "2"
    assert "--tp" not in cmdline and len(children) == 2


def test_dp_ep_under_torchrun_serves_exactly_what_one_process_serves(model_dir, one_process):
    two = _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                f"--master-port={free_port()}"], model_dir, "--parallel", "dp-ep")
    assert two == one_process
