"""`dsv4 generate` and `dsv4 chat` on a saved tiny checkpoint, and the clear message when no model is given."""
import io
import json

import pytest
import torch
from safetensors.torch import save_file

from dsv4.chat import encode_messages_ids, load_tokenizer, parse_completion
from dsv4.cli import main
from dsv4.engine import model_path
from tiny_models import random_model
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, one_torch_thread):
    model = random_model(vocab_size=129280, max_position_embeddings=128, num_hash_layers=0, seed=2)
    path = tmp_path_factory.mktemp("ckpt")
    (path / "config.json").write_text(json.dumps(model.cfg.to_dict()))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "model.safetensors")
    return path, model


def greedy_answer(model, prompt: list[int], n: int) -> str:
    """Reference: a plain greedy loop over model(...), decoded and parsed as a chat-mode answer."""
    cache, out = model.make_cache(1), []
    logits = model(torch.tensor([prompt]), cache)[0, -1]
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = model(torch.tensor([[out[-1]]]), cache)[0, -1]
    return parse_completion(load_tokenizer().decode(out), thinking=False)["content"]


@pytest.mark.parametrize("command", [["generate", "hello"], ["chat"], ["serve"]])
def test_without_a_model_the_commands_explain_and_fail(command, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(model_path, "DEMO_MODEL_DIR", tmp_path / "demo")
    assert main(command) == 2
    assert "no bundled demo model yet" in capsys.readouterr().err


def test_generate_prints_the_greedy_answer(checkpoint, capsys):
    path, model = checkpoint
    code = main(["generate", "Say hi", "--model", str(path), "--no-thinking", "--temperature", "0",
                 "--max-tokens", "5"])
    prompt = encode_messages_ids([{"role": "user", "content": "Say hi"}], thinking=False)
    assert code == 0 and capsys.readouterr().out == greedy_answer(model, prompt, 5) + "\n"


def test_generate_shows_reasoning_on_stderr_only_when_asked(checkpoint, capsys):
    args = ["generate", "Say hi", "--model", str(checkpoint[0]), "--max-tokens", "4", "--seed", "1"]
    main(args)
    hidden = capsys.readouterr()
    main(args + ["--show-reasoning"])
    shown = capsys.readouterr()
    assert hidden.err == "" and shown.err and shown.out == hidden.out


def test_chat_switches_thinking_and_keeps_the_conversation(checkpoint, monkeypatch, capsys):
    lines = "/think off\nhello\n/reasoning show\nand again\n/exit\nnever read\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    assert main(["chat", "--model", str(checkpoint[0]), "--max-tokens", "3", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "[thinking off, reasoning hidden]" in out and "[thinking off, reasoning shown]" in out
