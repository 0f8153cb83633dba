"""Training parts against independent references: the compact model's loss equals the full-vocabulary
cross-entropy of the expanded model (main head and MTP), chat masks cover exactly what the assistant writes,
packing keeps documents whole, batches cover every row once per epoch, gate biases move towards balance, the lr
schedule's shape, the packed-data cache."""
import math

import pytest
import torch
import torch.nn.functional as F

from dsv4.chat import load_tokenizer
from dsv4.config import ModelConfig
from dsv4.model.transformer import Transformer
from dsv4.presets import PRESETS
from dsv4.train.balance import ExpertLoad
from dsv4.train.data import Document, batch_rows, chat_document, pack, prepare_data
from dsv4.train.initialization import init_weights
from dsv4.train.loop import make_optimizer
from dsv4.train.loss import loss_sums
from dsv4.train.task_data import task_record
from dsv4.train.tasks import generate_tasks
from dsv4.train.threads import torch_threads
from dsv4.train.train_config import TrainConfig, lr_at
from dsv4.train.vocab import ActiveVocab, VocabError


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):  # tiny ops: on a shared 2-core machine two threads are far slower than one
        yield


def _tiny(seed: int = 0) -> Transformer:
    model = init_weights(Transformer(ModelConfig(**PRESETS["tiny"])), seed)
    torch.nn.init.normal_(model.head.weight, std=0.3)
    return model


def test_the_compact_model_loss_is_the_full_vocabulary_cross_entropy_of_the_expanded_model():
    cfg = ModelConfig(**PRESETS["tiny"])
    vocab = ActiveVocab([0, 1, 3, 7, 50, 99, 200, 300, 511], cfg.vocab_size)
    compact = init_weights(Transformer(vocab.compact_config(cfg)), seed=0)
    torch.nn.init.normal_(compact.head.weight, std=0.3)
    rows = vocab.ids[torch.randint(0, len(vocab.ids), (2, 30))]              # full ids
    mask = (torch.rand(2, 30) < 0.7).float()
    got = loss_sums(compact, vocab.to_compact(rows), mask, vocab)
    full = vocab.expand(compact, cfg)
    cache = full.make_cache(2)
    X = full.hidden_streams(rows[:, :28], cache)
    main = F.cross_entropy(full.logits(X).flatten(0, 1), rows[:, 1:29].flatten(), reduction="none")
    mtp = F.cross_entropy(full.mtp_logits(X, rows[:, 1:29], cache).flatten(0, 1), rows[:, 2:].flatten(),
                          reduction="none")
    torch.testing.assert_close(got.main, (main * mask[:, 1:29].flatten()).sum(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.mtp, (mtp * mask[:, 2:].flatten()).sum(), rtol=1e-5, atol=1e-5)
    inactive = torch.ones(cfg.vocab_size, dtype=torch.bool)
    inactive[vocab.ids] = False
    assert full.head.weight[inactive].abs().sum() == 0 and full.head.weight[~inactive].abs().sum() > 0
    with pytest.raises(VocabError, match="token 5 is not in the active vocabulary"):
        vocab.to_compact(torch.tensor([3, 5]))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.mark.parametrize("mode", ["chat", "think", "tools"])
def test_a_chat_documents_targets_are_exactly_what_the_assistant_writes(tokenizer, mode):
    task = next(t for t in generate_tasks(20, seed=4) if t.expression is not None)
    doc = chat_document(task_record(task, mode), tokenizer)
    targets = tokenizer.decode([i for i, m in zip(doc.ids, doc.mask) if m])
    eos = "<｜end▁of▁sentence｜>"
    expected = {"chat": f"{task.answer}{eos}", "think": f"{task.reasoning}</think>{task.answer}{eos}",
                "tools": f'\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="calculator">\n<｜DSML｜parameter '
                         f'name="expression" string="true">{task.expression}</｜DSML｜parameter>\n'
                         f'</｜DSML｜invoke>\n</｜DSML｜tool_calls>{eos}{task.answer}{eos}'}[mode]
    assert targets == expected
    assert tokenizer.decode(doc.ids).endswith(expected[-len(eos) - len(task.answer):])


def test_packing_keeps_documents_whole_and_cuts_only_those_longer_than_a_row():
    docs = [Document(list(range(100 + 10 * k, 100 + 10 * k + n)), [1] * n) for k, n in enumerate([3, 4, 2, 9])]
    tokens, mask = pack(docs, row_len=6, pad_id=-1)
    assert tokens.tolist() == [[100, 101, 102, -1, -1, -1], [110, 111, 112, 113, 120, 121],
                               [130, 131, 132, 133, 134, 135], [136, 137, 138, -1, -1, -1]]
    assert mask.sum() == 18 and bool((mask == (tokens >= 0)).all())


def test_batches_cover_every_row_once_per_epoch_and_depend_only_on_seed_and_step():
    seen = torch.cat([batch_rows(step, 4, 10, seed=3) for step in range(5)])  # 20 rows = 2 epochs of 10
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(batch_rows(3, 4, 10, seed=3), seen[12:16])
    assert not torch.equal(batch_rows(0, 10, 10, seed=4), seen[:10])


def test_gate_biases_move_towards_balance_and_are_left_out_of_the_optimizer():
    model = _tiny().train()
    load = ExpertLoad(model)
    assert set(load.gates) == {"layers.1.ffn.gate", "layers.2.ffn.gate", "layers.3.ffn.gate", "mtp.0.ffn.gate"}
    biases = {id(g.bias) for g in load.gates.values()}
    optimizer = make_optimizer(model, TrainConfig())
    assert not biases & {id(p) for group in optimizer.param_groups for p in group["params"]}
    rows = torch.randint(0, 512, (2, 40))
    loss_sums(model, rows, torch.ones(2, 40), ActiveVocab(range(512), 512))
    counts = {name: c.clone() for name, c in load.counts.items()}
    assert all(int(c.sum()) == 2 * 38 * 2 for c in counts.values())  # every token picks top-2 experts
    load.update_biases(0.01)
    for name, gate in load.gates.items():
        c = counts[name].float()
        expected = 0.01 * torch.sign(c.mean() - c)
        torch.testing.assert_close(gate.bias.detach(), expected)


def test_the_learning_rate_warms_up_linearly_then_follows_a_cosine_to_the_floor():
    cfg = TrainConfig(lr=1.0, warmup=10, steps=110, min_lr_ratio=0.1)
    assert [lr_at(s, cfg) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert lr_at(60, cfg) == pytest.approx(0.55) and lr_at(110, cfg) == pytest.approx(0.1)
    assert lr_at(35, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_packed_data_is_cached_per_file_version_and_settings(tokenizer, tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("one two three " * 20)
    first = prepare_data([str(data)], tokenizer, seq_len=16, val_fraction=0.0, seed=0, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("data-*.pt"))) == 1
    again = prepare_data([str(data)], tokenizer, seq_len=16, val_fraction=0.0, seed=0, cache_dir=tmp_path)
    assert torch.equal(first.train_tokens, again.train_tokens) and first.fingerprint() == again.fingerprint()
    data.write_text("four five " * 20)
    changed = prepare_data([str(data)], tokenizer, seq_len=16, val_fraction=0.0, seed=0, cache_dir=tmp_path)
    assert changed.fingerprint() != first.fingerprint() and len(list(tmp_path.glob("data-*.pt"))) == 2
    assert tokenizer.decode(changed.train_tokens[0, 1:6].tolist()) == "four five four five four"
