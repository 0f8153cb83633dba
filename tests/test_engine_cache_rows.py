"""Cache row operations: sequences at different positions stacked into one batch decode as they do alone."""
import torch

from dsv4.cache import select_rows, stack_caches
from tiny_models import random_model
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)


def prefilled(model, n: int, seed: int):
    ids = torch.randint(0, model.cfg.vocab_size, (1, n), generator=torch.Generator().manual_seed(seed))
    cache = model.make_cache(1)
    model(ids, cache)
    return cache


def test_stacked_rows_decode_like_each_row_alone_and_split_back_intact():
    torch.manual_seed(0)
    model = random_model()
    lengths = (3, 37, 18)  # different positions, different numbers of compressed entries
    alone = [prefilled(model, n, seed=n) for n in lengths]
    batch = stack_caches([prefilled(model, n, seed=n) for n in lengths])
    assert batch.pos.tolist() == list(lengths)
    steps = torch.tensor([[5, 6], [7, 8], [9, 10]])
    for s in range(2):
        got = model(steps[:, s:s + 1], batch)
        for row, cache in enumerate(alone):
            want = model(steps[row:row + 1, s:s + 1], cache)
            torch.testing.assert_close(got[row:row + 1], want, rtol=1e-4, atol=1e-4)
    middle = select_rows(batch, [1])
    assert middle.pos.tolist() == [lengths[1] + 2]
    torch.testing.assert_close(model(torch.tensor([[11]]), middle), model(torch.tensor([[11]]), alone[1]),
                               rtol=1e-4, atol=1e-4)


def test_selected_rows_are_copies():
    model = random_model()
    cache = prefilled(model, 9, seed=1)
    copy = select_rows(cache, [0])
    model(torch.tensor([[3]]), copy)
    assert cache.pos.tolist() == [9] and copy.pos.tolist() == [10]
    assert not torch.equal(cache.layers[0].window, copy.layers[0].window)


def test_restoring_some_rows_leaves_the_others_advanced():
    model = random_model()
    batch = stack_caches([prefilled(model, 6, seed=2), prefilled(model, 11, seed=3)])
    before = select_rows(batch, [0, 1])
    snap = batch.snapshot()
    model(torch.tensor([[4, 5], [6, 7]]), batch)
    advanced = select_rows(batch, [1])
    batch.restore_rows(snap, [0])
    assert batch.pos.tolist() == [6, 13]
    step = torch.tensor([[9]])
    torch.testing.assert_close(model(step, select_rows(batch, [0])), model(step, select_rows(before, [0])))
    torch.testing.assert_close(model(step, select_rows(batch, [1])), model(step, advanced))
