import dataclasses
import warnings

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from common.data.searches import SearchExample
from common.model.adapter import QueryAdapter
from common.model.fusion import l2_normalize
from common.model.ranking_loss import (
    SearchRows,
    negative_indices,
    ranking_loss,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIM, N_ITEMS = 8, 40


def make_searches(n: int, seed: int = 0) -> tuple[list[SearchExample], np.ndarray]:
    rng = np.random.default_rng(seed)
    items = l2_normalize(rng.standard_normal((N_ITEMS, DIM)))
    searches = []
    for _ in range(n):
        shown = rng.choice(N_ITEMS, size=5, replace=False)
        query = l2_normalize(rng.standard_normal(DIM))
        searches.append(SearchExample(query, shown.astype(np.int64), int(shown[2])))
    return searches, items


def test_loss_is_cross_entropy_of_the_clicked_item_against_its_negatives():
    torch.manual_seed(0)
    q, pos, neg = torch.randn(4, DIM), torch.randn(4, DIM), torch.randn(4, 6, DIM)
    losses = ranking_loss(q, pos, neg, temperature=0.1)
    logits = torch.cat([(q * pos).sum(1, keepdim=True), torch.einsum("bd,bmd->bm", q, neg)], 1)
    expected = F.cross_entropy(logits / 0.1, torch.zeros(4, dtype=torch.long), reduction="none")
    assert losses.shape == (4,)
    torch.testing.assert_close(losses, expected)
    # a positive far above every negative costs almost nothing
    easy = ranking_loss(pos, pos * 10, torch.zeros(4, 6, DIM), temperature=0.1)
    assert torch.all(easy < 1e-3)


@pytest.mark.parametrize(
    "shapes",
    [((4, DIM), (4, DIM), (4, 6, DIM + 1)), ((4, DIM), (3, DIM), (4, 6, DIM)), ((DIM,),) * 3],
)
def test_loss_rejects_mismatched_shapes(shapes):
    q, pos, neg = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError):
        ranking_loss(q, pos, neg, temperature=0.1)


def test_loss_rejects_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        ranking_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 1, 2), 0.0)


def test_negatives_are_own_shown_items_then_random_items_never_the_click():
    searches, _ = make_searches(50)
    negatives = negative_indices(
        searches, N_ITEMS, shown_negatives=6, random_negatives=10, rng=np.random.default_rng(0)
    )
    assert negatives.shape == (50, 16)
    for row, search in zip(negatives, searches, strict=True):
        others = [i for i in search.shown if i != search.clicked]
        assert list(row[: len(others)]) == others  # 4 shown-not-clicked, in impression order
        assert search.clicked not in row
        assert np.all((row >= 0) & (row < N_ITEMS))


def test_changing_one_search_changes_only_its_own_negatives():
    searches, _ = make_searches(8)
    changed = list(searches)
    changed[3] = SearchExample(searches[3].query_vector, np.array([0, 1, 2]), 0)
    kwargs = {"shown_negatives": 5, "random_negatives": 7}
    a = negative_indices(searches, N_ITEMS, rng=np.random.default_rng(1), **kwargs)
    b = negative_indices(changed, N_ITEMS, rng=np.random.default_rng(1), **kwargs)
    same = np.all(a == b, axis=1)
    assert not same[3] and same[np.arange(8) != 3].all()


def per_sample_grads(adapter, loss_fn, tensors) -> list[torch.Tensor]:
    """Gradient of sample i's loss, each from a forward pass over the WHOLE batch, so any
    coupling between samples inside the loss would show up."""
    queries, positives, negatives = tensors
    grads = []
    for i in range(len(queries)):
        adapter.zero_grad()
        loss_fn(adapter(queries), positives, negatives)[i].backward()
        grads.append(torch.cat([p.grad.flatten().clone() for p in adapter.parameters()]))
    return grads


def untouched_rows(loss_fn, searches, changed, items) -> np.ndarray:
    """For each sample, whether its gradient is bit-identical after ``changed`` replaced
    sample 3's data."""
    torch.manual_seed(0)
    adapter = QueryAdapter(DIM, rank=4)
    torch.nn.init.normal_(adapter.up.weight, std=0.3)  # not the identity: all weights matter
    kwargs = {"shown_negatives": 4, "random_negatives": 6}
    before = SearchRows(searches, items, rng=np.random.default_rng(5), **kwargs).tensors()
    after = SearchRows(changed, items, rng=np.random.default_rng(5), **kwargs).tensors()
    grads_before = per_sample_grads(adapter, loss_fn, before)
    grads_after = per_sample_grads(adapter, loss_fn, after)
    return np.array([torch.equal(a, b) for a, b in zip(grads_before, grads_after, strict=True)])


def in_batch_loss(queries, positives, negatives):
    """The forbidden variant: every other sample's clicked item is a negative."""
    logits = queries @ positives.T / 0.1
    return F.cross_entropy(logits, torch.arange(len(queries)), reduction="none")


def test_per_sample_gradients_one_record_moves_only_its_own_gradient():
    searches, items = make_searches(6, seed=2)
    changed = list(searches)
    other = make_searches(1, seed=9)[0][0]
    changed[3] = dataclasses.replace(other, shown=np.array([7, 8, 9]), clicked=8)

    def loss(q, p, n):
        return ranking_loss(q, p, n, temperature=0.1)

    same = untouched_rows(loss, searches, changed, items)
    assert not same[3], "the changed sample's own gradient must change"
    assert same[np.arange(6) != 3].all(), "another sample's gradient moved"
    # the check does catch coupling: in-batch negatives leak the change into every gradient
    leaky = untouched_rows(in_batch_loss, searches, changed, items)
    assert not leaky.any()


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_opacus_per_sample_gradients_match_the_loss_of_each_sample():
    from opacus import GradSampleModule

    searches, items = make_searches(5, seed=3)
    tensors = SearchRows(
        searches, items, shown_negatives=4, random_negatives=3, rng=np.random.default_rng(0)
    ).tensors()
    torch.manual_seed(0)
    adapter = QueryAdapter(DIM, rank=4)
    torch.nn.init.normal_(adapter.up.weight, std=0.3)
    expected = per_sample_grads(adapter, lambda q, p, n: ranking_loss(q, p, n, 0.1), tensors)
    wrapped = GradSampleModule(adapter, loss_reduction="mean")
    queries, positives, negatives = tensors
    ranking_loss(wrapped(queries), positives, negatives, 0.1).mean().backward()
    got = torch.cat([p.grad_sample.flatten(1) for p in adapter.parameters()], dim=1)
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-4, atol=1e-6)


def test_search_rows_tensors_shapes_and_positives():
    searches, items = make_searches(7)
    q, pos, neg = SearchRows(
        searches, items, shown_negatives=3, random_negatives=2, rng=np.random.default_rng(0)
    ).tensors()
    assert q.shape == (7, DIM) and pos.shape == (7, DIM) and neg.shape == (7, 5, DIM)
    assert q.dtype == pos.dtype == neg.dtype == torch.float32
    np.testing.assert_array_equal(pos.numpy(), items[[s.clicked for s in searches]])
    with pytest.raises(ValueError):
        SearchRows([], items, shown_negatives=1, random_negatives=1, rng=None).tensors()


def test_random_negatives_come_from_the_public_items_only():
    rng = np.random.default_rng(3)
    public = 10
    searches = [
        SearchExample(np.zeros(4, np.float32), np.array([c, 11]), c) for c in (2, 12, 5, 13)
    ]
    negatives = negative_indices(
        searches, 14, shown_negatives=0, random_negatives=200, rng=rng, public_items=public
    )
    assert negatives.max() < public
    for row, search in zip(negatives, searches, strict=True):
        assert search.clicked not in row  # never the device's own click


def _rows(searches, items, seed=0):
    return SearchRows(
        searches, items, shown_negatives=3, random_negatives=4, rng=np.random.default_rng(seed)
    )


def test_search_rows_read_as_batches_equal_the_rows_stacked_one_by_one():
    searches, items = make_searches(37, seed=4)
    vectors = np.asarray(items, dtype=np.float32)
    ids = negative_indices(
        searches, N_ITEMS, shown_negatives=3, random_negatives=4, rng=np.random.default_rng(0)
    )
    stacked = (  # what the rows are, built by plain numpy indexing
        np.stack([np.asarray(s.query_vector, dtype=np.float32) for s in searches]),
        vectors[[s.clicked for s in searches]],
        vectors[ids],
    )
    rows = _rows(searches, items)
    for got, want in zip(rows.tensors(), stacked, strict=True):
        assert torch.equal(got, torch.from_numpy(want))
    torch.manual_seed(1)
    one_by_one = list(DataLoader(rows, batch_size=16, shuffle=True))
    torch.manual_seed(1)
    batches = BatchSampler(RandomSampler(rows), 16, drop_last=False)
    read_whole = list(DataLoader(rows, sampler=batches, batch_size=None))
    assert [len(b[0]) for b in read_whole] == [16, 16, 5]
    for got, want in zip(read_whole, one_by_one, strict=True):
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)


def test_search_rows_redraw_gives_each_search_fresh_negatives_from_the_generator():
    searches, items = make_searches(20, seed=5)
    rows = _rows(searches, items, seed=3)
    first = rows[torch.arange(20)][2].clone()
    rows.redraw()
    rng = np.random.default_rng(3)
    kwargs = {"shown_negatives": 3, "random_negatives": 4, "rng": rng}
    negative_indices(searches, N_ITEMS, **kwargs)  # the first draw
    expected = torch.from_numpy(items[negative_indices(searches, N_ITEMS, **kwargs)])
    again = rows[torch.arange(20)][2]
    assert torch.equal(again, expected.float())
    assert not torch.equal(again[:, 3:], first[:, 3:])  # the random slots moved
    assert torch.equal(again[:, :3], first[:, :3])  # each search's own shown items stay


def test_search_rows_take_a_read_only_item_table_without_a_warning():
    searches, items = make_searches(6, seed=6)
    frozen = np.asarray(items, dtype=np.float32)
    frozen.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = _rows(searches, frozen)
    assert not np.shares_memory(rows.items.numpy(), frozen)  # a copy torch may own
    assert torch.equal(
        rows[torch.arange(6)][1], torch.from_numpy(frozen.copy())[[s.clicked for s in searches]]
    )
