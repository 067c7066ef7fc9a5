import pytest
import torch

from textrnn.errors import TextrnnError
from textrnn.text.batching import Batches


def stream(n):
    return torch.arange(n)


def test_sequential_batches_continue_each_row():
    batches = Batches(stream(1000), batch_size=4, num_steps=10, partition="sequential", seed=0)
    epoch = list(batches.epoch(0))
    assert len(epoch) == batches.per_epoch > 2
    for (x1, y1), (x2, _) in zip(epoch, epoch[1:]):
        assert x1.shape == (4, 10)
        assert torch.equal(y1[:, :-1], x1[:, 1:])  # targets are inputs shifted by one
        assert torch.equal(x2[:, 0], x1[:, -1] + 1)  # each row continues where it stopped
        assert torch.equal(y1[:, -1], x2[:, 0])


def test_sequential_rows_are_contiguous_and_disjoint():
    batches = Batches(stream(500), batch_size=3, num_steps=7, partition="sequential", seed=1)
    rows = torch.cat([x for x, _ in batches.epoch(0)], dim=1)
    for row in rows:
        assert torch.equal(row, torch.arange(row[0], row[0] + row.numel()))
    seen = rows.flatten().tolist()
    assert len(seen) == len(set(seen))


def test_offsets_change_per_epoch_and_repeat_per_seed():
    a = Batches(stream(1000), 4, 10, "sequential", seed=0)
    b = Batches(stream(1000), 4, 10, "sequential", seed=0)
    firsts = {int(next(iter(a.epoch(e)))[0][0, 0]) for e in range(20)}
    assert len(firsts) > 1
    assert [int(next(iter(a.epoch(e)))[0][0, 0]) for e in range(5)] == [
        int(next(iter(b.epoch(e)))[0][0, 0]) for e in range(5)
    ]


def test_resuming_mid_epoch_gives_the_same_batches():
    batches = Batches(stream(1000), 4, 10, "random", seed=3)
    full = list(batches.epoch(2))
    tail = list(batches.epoch(2, start=5))
    assert len(tail) == len(full) - 5
    for (x1, y1), (x2, y2) in zip(full[5:], tail):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_random_windows_are_valid_and_never_read_past_the_end():
    n = 333
    batches = Batches(stream(n), 5, 9, "random", seed=0)
    assert not batches.carries_state
    starts = []
    for x, y in batches.epoch(0):
        assert torch.equal(y, x + 1)
        assert int(y.max()) < n
        starts += x[:, 0].tolist()
    assert len(starts) == len(set(starts))


def test_batches_only_hold_the_tokens_they_are_given():
    train = torch.arange(100, 400)  # validation/test ids would lie elsewhere
    for partition in ("sequential", "random"):
        for x, y in Batches(train, 4, 8, partition, seed=0).epoch(0):
            assert int(x.min()) >= 100 and int(y.max()) < 400


def test_a_corpus_too_short_for_one_batch_is_a_clear_error():
    with pytest.raises(TextrnnError, match="smaller --batch-size or --num-steps"):
        Batches(stream(50), batch_size=8, num_steps=10, partition="sequential", seed=0)
