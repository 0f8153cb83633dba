"""Expert offloading from the command line and the server: `dsv4 generate --expert-budget SIZE --stats` answers
exactly as without a budget and prints the cache's counters; a malformed budget is a clear error; /metrics of a
server over an offloaded model exposes the counters, consistent with each other."""
import re

import httpx
import pytest
import torch

import dsv4
from dsv4.cli import main
from dsv4.offload.install import module_bytes
from dsv4.server.run import BackgroundServer, make_state
from dsv4.weights.writer import save_model
from tiny_models import random_model
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, one_torch_thread):
    model = random_model(vocab_size=129280, max_position_embeddings=128, num_hash_layers=0, seed=2)
    path = tmp_path_factory.mktemp("ckpt") / "bf16"
    save_model(model, path, "BF16")
    return path, 4 * module_bytes(model.layers[0].ffn.experts[0])  # 4 of 8 experts per layer, 5 MoE layers


def test_generate_with_an_expert_budget_answers_as_resident_and_prints_the_counters(checkpoint, capsys):
    path, budget = checkpoint
    args = ["generate", "Say hi", "--model", str(path), "--no-thinking", "--temperature", "0", "--max-tokens", "5"]
    assert main(args + ["--stats"]) == 0
    resident = capsys.readouterr()
    assert main(args + ["--expert-budget", str(budget), "--stats"]) == 0
    offloaded = capsys.readouterr()
    assert offloaded.out == resident.out
    assert "[stats] prompt" in resident.err and "experts:" not in resident.err
    m = re.search(r"experts: (\d+) lookups, ([\d.]+)% hits, (\d+) read from disk", offloaded.err)
    assert m and int(m[1]) > 0 and int(m[3]) > 0


def test_malformed_expert_budget_is_reported_by_the_command(checkpoint, capsys):
    assert main(["generate", "hi", "--model", str(checkpoint[0]), "--expert-budget", "lots"]) == 2
    assert "expert budget: expected a size such as 4GB" in capsys.readouterr().err


def test_metrics_expose_the_expert_cache_of_an_offloaded_model(checkpoint):
    path, budget = checkpoint
    model = dsv4.load_model(path, dtype=torch.float32, expert_budget=budget)
    with BackgroundServer(make_state(model, model_name="tiny")) as server:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
        assert httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=600).status_code == 200
        text = httpx.get(f"{server.url}/metrics").text
    values = {m[1]: float(m[2]) for m in re.finditer(r"^dsv4_(expert_\w+) (\S+)$", text, re.M)}
    assert values["expert_cache_lookups_total"] > 0
    hits, misses = values["expert_cache_hits_total"], values["expert_cache_misses_total"]
    assert hits + misses == values["expert_cache_lookups_total"]
    assert values["expert_bytes_read_total"] > 0 and 0 < values["expert_cache_bytes"] <= budget
    assert values["expert_cache_budget_bytes"] == budget
