import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from server.search import catalog_vectors
from server.search.catalog import Catalog, Filters, Item
from server.search.catalog_vectors import CatalogVectors, VectorFileWriter, vector_file
from server.search.index_kinds import IndexOptions

ROOT = Path(__file__).resolve().parents[3]
PQ = IndexOptions(kind="ivf-pq", exact_max_items=0, nlist=4, pq_bytes=4, refine_factor=10)


def unit(rng, n, dim=16):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def items(n, prefix="i"):
    return [
        Item(id=f"{prefix}{i}", title=f"t{i}", category=["A", "B"][i % 2], price=float(i))
        for i in range(n)
    ]


def answers(catalog, queries, filters=None):
    out = []
    for q in queries:
        found, scores, vecs = catalog.search(q, 10, filters)
        out.append(([it.id for it in found], scores.tolist(), vecs.tolist()))
    return out


def store_file(catalog: Catalog) -> Path:
    return vector_file(catalog.folder, catalog.db.store_id())


def test_the_file_round_trips_and_a_short_one_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    keys, vectors = np.array([3, 5, 9]), unit(rng, 3)
    writer = VectorFileWriter(tmp_path / "v.f32", 3, 16)
    writer.append(keys[:2], vectors[:2])
    with pytest.raises(ValueError, match="1 rows written of 3|2 rows written of 3"):
        writer.commit()
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    writer = VectorFileWriter(tmp_path / "v.f32", 3, 16)
    writer.append(keys, vectors)
    stored = CatalogVectors(writer.commit())
    assert stored.keys.tolist() == [3, 5, 9] and stored.last_key == 9
    refs = np.concatenate([[2, 0], stored.add(vectors[:1] * 2)])
    np.testing.assert_array_equal(stored.gather(refs), [vectors[2], vectors[0], vectors[0] * 2])
    np.testing.assert_array_equal(stored.read(np.array([0, 2, -1])), stored.gather([0, 2, -1]))
    (tmp_path / "short.f32").write_bytes((tmp_path / "v.f32").read_bytes()[:-4])
    with pytest.raises(ValueError, match="truncated"):
        CatalogVectors(tmp_path / "short.f32")


def test_upserts_live_in_the_overlay_until_compaction_and_reopen_alike(tmp_path):
    rng = np.random.default_rng(1)
    catalog = Catalog.create(tmp_path / "s", items(300), unit(rng, 300), encoder_version="e",
                             options=PQ)  # fmt: skip
    queries, cheap = unit(rng, 6), Filters(categories=("b",), price_max=200)
    catalog.upsert(items(20, "n") + [Item(id="i4", title="moved", category="B")], unit(rng, 21))
    catalog.delete(["i7", "n3"])
    assert catalog.vectors.overlay_rows == 21 and len(catalog) == 318
    before = answers(catalog, queries) + answers(catalog, queries, cheap)
    ids, vectors = catalog.all_vectors()
    catalog.close()

    reopened = Catalog.open(tmp_path / "s", exact_max_items=0)  # file kept, newer rows read
    assert reopened.vectors.overlay_rows == 20  # the live ones
    assert answers(reopened, queries) + answers(reopened, queries, cheap) == before
    reopened.compact()
    assert reopened.vectors.overlay_rows == 0 and len(reopened.vectors.keys) == 318
    assert answers(reopened, queries) + answers(reopened, queries, cheap) == before
    assert reopened.all_vectors()[0] == ids
    np.testing.assert_array_equal(reopened.all_vectors()[1], vectors)
    reopened.close()
    again = Catalog.open(tmp_path / "s", exact_max_items=0)
    assert answers(again, queries) == before[:6] and again.get("i4").title == "moved"
    again.close()


def test_a_missing_or_damaged_file_is_written_again_from_the_database(tmp_path):
    rng = np.random.default_rng(2)
    vectors = unit(rng, 50)
    catalog = Catalog.create(tmp_path / "s", items(50), vectors, encoder_version="e")
    path = store_file(catalog)
    queries = unit(rng, 3)
    before = answers(catalog, queries)
    catalog.close()
    for damage in (lambda: path.unlink(), lambda: path.write_bytes(path.read_bytes()[:100])):
        damage()
        (tmp_path / "s" / ".vectors-x.f32.tmp").write_bytes(b"left by a crash")
        reopened = Catalog.open(tmp_path / "s")
        assert answers(reopened, queries) == before
        assert sorted(p.name for p in (tmp_path / "s").glob("*vectors*")) == [path.name]
        reopened.close()


def test_a_rebuild_gets_a_new_file_and_keys_are_never_reused(tmp_path):
    rng = np.random.default_rng(3)
    catalog = Catalog.create(tmp_path / "s", items(10), unit(rng, 10), encoder_version="e")
    old_file = store_file(catalog)
    catalog.delete(["i8", "i9"])  # the highest keys, still in the file
    catalog.close()
    reopened = Catalog.open(tmp_path / "s")
    fresh = unit(rng, 1)
    reopened.upsert([Item(id="late", title="late")], fresh)
    reopened.close()
    reopened = Catalog.open(tmp_path / "s")
    np.testing.assert_array_equal(reopened.vectors_of(["late"]), fresh)
    reopened.close()

    Catalog.create(tmp_path / "s", items(4), unit(rng, 4), encoder_version="e").close()
    rebuilt = Catalog.open(tmp_path / "s")
    assert store_file(rebuilt) != old_file and not old_file.exists() and len(rebuilt) == 4
    rebuilt.close()


KILLED = """
import sys
import numpy as np
from server.search import catalog_vectors
from server.search.catalog import Catalog, Item

def stop(self, *args):  # killed while the new vector file is half written
    print("acked", flush=True)
    sys.stdin.readline()

catalog = Catalog.open(sys.argv[1])
catalog.upsert([Item(id="acked", title="a")], np.full((1, 16), 0.25, dtype=np.float32))
catalog_vectors.VectorFileWriter.commit = stop
catalog.compact()
"""


def test_kill_9_while_folding_the_overlay_loses_no_acknowledged_upsert(tmp_path):
    rng = np.random.default_rng(4)
    Catalog.create(tmp_path / "s", items(30), unit(rng, 30), encoder_version="e").close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", KILLED, str(tmp_path / "s")]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    with subprocess.Popen(command, env=env, **pipes) as proc:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "acked"
        proc.send_signal(signal.SIGKILL)
    assert list((tmp_path / "s").glob(".vectors-*.tmp"))  # the half-written file
    reopened = Catalog.open(tmp_path / "s")
    np.testing.assert_array_equal(reopened.vectors_of(["acked"])[0], np.full(16, 0.25))
    assert len(reopened) == 31 and reopened.search(np.full(16, 0.25), 1)[0][0].id == "acked"
    assert not list((tmp_path / "s").glob(".vectors-*.tmp"))
    reopened.close()


def mapped_kb(path: Path) -> int:
    """Resident kB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.parametrize("libc", [True, False], ids=["libc-pread", "os-preadv"])
def test_queries_read_rows_without_mapping_the_file_into_the_process(tmp_path, monkeypatch, libc):
    if not libc:
        monkeypatch.setattr(catalog_vectors, "_PREAD", None)
    rng = np.random.default_rng(3)
    n, dim = 8192, 64
    path, vectors = tmp_path / "vectors-x.f32", unit(rng, n, dim)
    writer = VectorFileWriter(path, n, dim)
    writer.append(np.arange(n, dtype=np.int64), vectors)
    writer.commit()
    stored = CatalogVectors(path)
    before = mapped_kb(path)
    rows = rng.choice(n, 400, replace=False)
    np.testing.assert_array_equal(stored.gather(rows), vectors[rows])
    assert stored.gather(np.array([], dtype=np.int64)).shape == (0, dim)
    assert mapped_kb(path) <= before  # pread: page cache, not this process's memory
    stored.file.take(rows, axis=0)  # the same rows read through the mapping do count
    assert mapped_kb(path) >= before + 400 * 4 * dim // 1024
