import threading
from concurrent.futures import Future

import numpy as np
import pytest

from server.search.catalog import Filters, Item
from server.search.engine import Query, SearchEngine

DIM = 4


class InstantEncoder:
    """Encodes a text at once to a fixed vector; "fail" fails."""

    cache = None

    def submit(self, text, image, *, text_weight, image_weight) -> Future:
        done: Future = Future()
        if text == "fail":
            done.set_exception(RuntimeError("encoding failed"))
        else:
            done.set_result(np.eye(DIM, dtype=np.float32)[len(text) % DIM])
        return done

    def close(self) -> None:
        pass


class RecordingCatalog:
    """Answers every query with one item named after its text length; the first call waits
    for ``release``; a query filtered on the category "broken" fails its whole call."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.release = threading.Event()

    def search_many(self, queries, n, filters):
        self.calls.append(len(queries))
        if len(self.calls) == 1:
            self.release.wait(10)
        if any(f is not None and "broken" in f.categories for f in filters):
            raise ValueError("broken filter")
        return [
            ([Item(id=f"item-{int(np.argmax(q))}", title="t")], np.ones(1), q[None, :])
            for q in queries
        ]


def _wait_for_first_call(catalog: RecordingCatalog) -> None:
    """Until the stage holds the first query in the catalog (10 s at most)."""
    for _ in range(1000):
        if catalog.calls:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the search stage never called the catalog")


@pytest.fixture
def engine_and_catalog():
    catalog = RecordingCatalog()
    engine = SearchEngine(InstantEncoder(), catalog)  # type: ignore[arg-type]
    yield engine, catalog
    engine.close()


def test_waiting_queries_are_searched_as_one_batch_and_an_error_stays_its_own(
    engine_and_catalog,
):
    engine, catalog = engine_and_catalog
    first = engine.submit(Query(text="a"))
    _wait_for_first_call(catalog)
    batch = [
        engine.submit(Query(text="ab")),
        engine.submit(Query(text="abc", filters=Filters(categories=("broken",)))),
        engine.submit(Query(text="fail")),
        engine.submit(Query(text="abcd")),
    ]
    threading.Event().wait(0.2)  # all four wait in the stage's queue
    catalog.release.set()
    assert first.result(10).hits[0].item.id == "item-1"
    assert batch[0].result(10).hits[0].item.id == "item-2"
    with pytest.raises(ValueError, match="broken filter"):
        batch[1].result(10)
    with pytest.raises(RuntimeError, match="encoding failed"):
        batch[2].result(10)
    assert batch[3].result(10).hits[0].item.id == "item-0"
    # the first alone; the three encoded ones together; after the error, each alone
    assert catalog.calls == [1, 3, 1, 1, 1]


def test_search_waits_for_the_result(engine_and_catalog):
    engine, catalog = engine_and_catalog
    catalog.release.set()
    result = engine.search(Query(text="abc", k=1))
    assert [h.item.id for h in result.hits] == ["item-3"] and result.model_version == "base"


def test_a_cancelled_request_is_dropped_and_the_stage_goes_on(engine_and_catalog):
    engine, catalog = engine_and_catalog
    first = engine.submit(Query(text="a"))
    _wait_for_first_call(catalog)
    gone = engine.submit(Query(text="ab"))
    assert gone.cancel()  # e.g. the client disconnected while it waited
    kept = engine.submit(Query(text="abc"))
    threading.Event().wait(0.2)
    catalog.release.set()
    assert first.result(10).hits and kept.result(10).hits[0].item.id == "item-3"
    assert gone.cancelled() and catalog.calls == [1, 1]  # only "abc" was searched after
    assert engine.search(Query(text="abcd")).hits[0].item.id == "item-0"
