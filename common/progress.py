"""Progress bars for long work: drawn on a terminal, silent when the output is a file or a
pipe (a log should hold results, not a redrawn bar per update)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_bar(iterable: Iterable[T] | None = None, *, show: bool = True, **options: Any) -> tqdm:
    """``tqdm`` over ``iterable`` that draws only on a terminal (and only when ``show``)."""
    options.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=None if show else True, **options)
