"""Task evaluation: an oracle that writes the training conversations scores 100% in every mode (so prompts,
parsing, the tool loop and grading agree with the training data), a babbler 0%; the plain greedy loop and the
engine decode the same tokens; `dsv4 eval --json` prints one accuracy per mode."""
import json

import pytest
import torch

from dsv4.chat import load_tokenizer
from dsv4.cli import main
from dsv4.config import ModelConfig
from dsv4.engine import Engine, EngineConfig
from dsv4.model.transformer import Transformer
from dsv4.presets import PRESETS
from dsv4.train.data import chat_document
from dsv4.train.evaluate import EVAL_MODES, EvalModeError, accuracy, run_mode
from dsv4.train.greedy import engine_generate, greedy_generate
from dsv4.train.initialization import init_weights
from dsv4.train.task_data import task_record
from dsv4.train.tasks import generate_tasks
from dsv4.train.threads import torch_threads

TASKS = generate_tasks(12, seed=11)
TRAIN_MODE = {"non_think": "chat", "think": "think", "tools": "tools"}


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):  # tiny ops: on a shared 2-core machine two threads are far slower than one
        yield


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def _continuing(docs, tokenizer):
    """A generate function continuing each prompt as the training document it begins does, through the next EOS."""
    def generate(prompts):
        outputs = []
        for p in prompts:
            doc = next(d for d in docs if d.ids[:len(p)] == p and len(d.ids) > len(p))
            rest = doc.ids[len(p):]
            outputs.append(rest[:rest.index(tokenizer.eos_id) + 1])
        return outputs
    return generate


def _oracle(tokenizer, mode: str):
    """Continues a prompt exactly as the training conversation of its task does, through the next EOS."""
    return _continuing([chat_document(task_record(t, TRAIN_MODE[mode]), tokenizer) for t in TASKS], tokenizer)


@pytest.mark.parametrize("mode", EVAL_MODES)
def test_an_oracle_writing_the_training_conversations_scores_full_marks(tokenizer, mode):
    outcomes = run_mode(TASKS, mode, _oracle(tokenizer, mode), tokenizer)
    assert accuracy(outcomes) == 1.0 and accuracy(outcomes, multi_step_only=True) == 1.0
    if mode == "tools":  # the calculator really ran: arithmetic tasks answered after a tool round
        assert any(o.task.expression for o in outcomes)


def test_a_babbling_model_scores_zero_and_a_bad_tool_call_gets_an_error_back(tokenizer):
    calls = []

    def babble(prompts):
        calls.append(tokenizer.decode(prompts[0]))
        call = ('\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="calculator">\n<｜DSML｜parameter '
                'name="expression" string="true">1 +</｜DSML｜parameter>\n</｜DSML｜invoke>\n'
                '</｜DSML｜tool_calls>')
        text = call if len(calls) == 1 else "no idea"
        return [tokenizer.encode(text) + [tokenizer.eos_id] for _ in prompts]

    outcomes = run_mode(TASKS[:3], "tools", babble, tokenizer)
    assert accuracy(outcomes) == 0.0
    assert "<tool_result>error: not an arithmetic expression: '1 +'" in calls[1]
    with pytest.raises(EvalModeError, match="'chat'"):
        run_mode(TASKS, "chat", babble, tokenizer)


def test_the_greedy_loop_and_the_engine_decode_the_same_tokens():
    torch.manual_seed(0)
    model = init_weights(Transformer(ModelConfig(**PRESETS["tiny"])), seed=1, std=0.2).eval()
    torch.nn.init.normal_(model.head.weight, std=0.2)
    prompts = [[0, 5, 9, 300, 17], [0, 44], [0, *range(100, 140)]]
    loop = greedy_generate(model, 12, frozenset({1}))(prompts)
    engine = engine_generate(Engine(model, EngineConfig(prefix_cache_bytes=0)), 12)(prompts)
    assert loop == engine and all(len(o) == 12 or o[-1] == 1 for o in loop)


def train_one_step(tmp_path) -> None:
    """A checkpoint at tmp_path/run/ckpt.pt: a tiny model trained one step on 8 task records."""
    from dsv4.train.loop import train
    from dsv4.train.task_data import task_records, write_jsonl
    from dsv4.train.train_config import TrainConfig

    write_jsonl(task_records(8, seed=2), tmp_path / "d.jsonl")
    cfg = TrainConfig(data=[str(tmp_path / "d.jsonl")], out_dir=str(tmp_path / "run"), steps=1, batch_size=1,
                      micro_batch=1, seq_len=64, warmup=1)
    train(cfg, ModelConfig(**dict(PRESETS["tiny"], vocab_size=129280, hidden_size=32)))


def test_eval_command_prints_one_accuracy_per_mode_as_json(tmp_path, capsys):
    train_one_step(tmp_path)
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "run" / "ckpt.pt"), "--n", "2", "--max-tokens", "3",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"non_think", "think", "tools"} and all(0 <= v <= 1 for v in result.values())

    # The table form adds a per-kind breakdown whose counts cover every task of each mode.
    assert main(["eval", "--model", str(tmp_path / "run" / "ckpt.pt"), "--n", "3", "--max-tokens", "3",
                 "--modes", "think", "tools"]) == 0
    lines = capsys.readouterr().out.split("correct per kind")[1].strip().splitlines()
    assert lines[0].split() == ["kind", "think", "tools"]
    cells = [line.split()[-2:] for line in lines[1:]]
    for column in (0, 1):
        assert sum(int(c[column].split("/")[1]) for c in cells) == 3
        assert all(0 <= int(c[column].split("/")[0]) <= int(c[column].split("/")[1]) for c in cells)


def _conversation_oracle(tokenizer, mode: str, conversations):
    """Continues a prompt as the training documents of the conversations do (one per thinking-mode question)."""
    from dsv4.train.data import chat_documents
    from dsv4.train.task_data import conversation_record

    docs = [d for c in conversations for d in chat_documents(conversation_record(c, TRAIN_MODE[mode]), tokenizer)]

    return _continuing(docs, tokenizer)


@pytest.mark.parametrize("mode", EVAL_MODES)
def test_an_oracle_writing_the_training_conversations_scores_full_marks_at_every_position(tokenizer, mode):
    from dsv4.train.conversations import Conversation
    from dsv4.train.evaluate import accuracy_by_position, held_out_conversations, held_out_phrasings, \
        run_conversations

    conversations = held_out_conversations(4, seed=2)
    outcomes = run_conversations(conversations, mode, _conversation_oracle(tokenizer, mode, conversations), tokenizer)
    assert len(outcomes) == sum(len(c.tasks) for c in conversations)
    assert accuracy(outcomes) == 1.0 and accuracy(outcomes, from_position=3) == 1.0
    assert set(accuracy_by_position(outcomes)) == {o.position for o in outcomes} >= {1, 2, 3}
    phrased = held_out_phrasings(6, seed=2)
    singles = [Conversation(None, [t]) for t in phrased]
    outcomes = run_mode(phrased, mode, _conversation_oracle(tokenizer, mode, singles), tokenizer)
    assert accuracy(outcomes) == 1.0


def test_eval_command_adds_the_phrasing_and_multi_turn_columns_when_asked(tmp_path, capsys):
    train_one_step(tmp_path)
    capsys.readouterr()
    args = ["eval", "--model", str(tmp_path / "run" / "ckpt.pt"), "--n", "2", "--max-tokens", "2", "--modes",
            "non_think", "think", "--phrased", "2", "--conversations", "1"]
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"non_think", "think", "phrased", "phrased_multi_step", "multi_turn",
                           "multi_turn_by_position"}
    assert set(result["phrased"]) == set(result["multi_turn"]) == {"non_think", "think"}
    assert {"1", "2", "3"} <= set(result["multi_turn_by_position"]["think"])
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "phrased" in table and "turn 3+" in table and "correct per question position" in table
