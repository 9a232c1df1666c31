"""Loading the fashion catalogue (``styles.csv`` + ``images/``), and the CSV reading it shares.

Malformed rows are skipped and counted by reason in a ``LoadReport``; only a missing file
(``FileNotFoundError``) or a missing required column (``DataFormatError``) stops a load.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from common.data.records import DataFormatError, LoadReport, Product
from common.progress import progress_bar

FASHION_CSV = "styles.csv"
FASHION_REQUIRED = ("id", "productDisplayName", "articleType", "image")
_NOT_ATTRIBUTES = frozenset({"id", "productDisplayName", "image"})
_PROGRESS_MIN_BYTES = 1 << 20


def open_text(path: Path) -> TextIO:
    """Open a UTF-8 text file for ``csv``, decompressing it if its name ends in ``.gz``."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def read_csv_records(
    path: Path, required: Sequence[str], report: LoadReport
) -> Iterator[dict[str, str]]:
    """Yield each data row of a CSV file with a header as a dict of stripped strings.

    Counts every non-blank row in ``report.rows_read``; rows with the wrong number of fields
    are skipped as ``wrong_field_count``. Shows a progress bar for large files on a TTY.
    """
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    with open_text(path) as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        for column in required:
            if column not in header:
                raise DataFormatError(f"{path}: required column {column!r} is missing")
        big = path.stat().st_size >= _PROGRESS_MIN_BYTES
        rows = progress_bar(reader, show=big, desc=path.name, unit=" rows", leave=False)
        for row in rows:
            if not row:
                continue
            report.rows_read += 1
            if len(row) != len(header):
                report.skip("wrong_field_count")
                continue
            yield {name: value.strip() for name, value in zip(header, row, strict=True)}


def load_fashion_catalog(folder: str | Path) -> tuple[list[Product], LoadReport]:
    """Load the products of a fashion folder (``styles.csv`` and the images it names).

    Skips rows with no id (``missing_id``), no title (``missing_title``), an id seen before
    (``duplicate_id``), or no image file (``missing_image``). ``category`` is the
    ``articleType``; ``attributes`` holds the other non-empty columns; ``price`` is None.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"fashion catalogue folder not found: {folder}")
    report = LoadReport(source=str(folder / FASHION_CSV))
    products: list[Product] = []
    seen: set[str] = set()
    for record in read_csv_records(folder / FASHION_CSV, FASHION_REQUIRED, report):
        reason = _fashion_skip_reason(record, folder, seen)
        if reason:
            report.skip(reason)
            continue
        seen.add(record["id"])
        products.append(_fashion_product(record, folder))
    report.rows_kept = len(products)
    return products, report


def _fashion_skip_reason(record: dict[str, str], folder: Path, seen: set[str]) -> str | None:
    if not record["id"]:
        return "missing_id"
    if not record["productDisplayName"]:
        return "missing_title"
    if record["id"] in seen:
        return "duplicate_id"
    if not record["image"] or not (folder / record["image"]).is_file():
        return "missing_image"
    return None


def _fashion_product(record: dict[str, str], folder: Path) -> Product:
    attributes = {k: v for k, v in record.items() if k not in _NOT_ATTRIBUTES and v}
    return Product(
        id=record["id"],
        title=record["productDisplayName"],
        image_path=folder / record["image"],
        category=record["articleType"],
        attributes=attributes,
        price=None,
    )
