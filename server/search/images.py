"""Opening uploaded photos with bounded cost.

The pixel count is read from the image header and checked before any pixel is decoded,
so a small file that would decode to gigabytes (a 13,000 x 13,000 PNG is 493 KB) is
refused at once. Decoding is CPU work: callers run it off the event loop, a few at a
time (``search.decode_workers``), so one large photo never stalls other requests.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from PIL import Image, UnidentifiedImageError

from server.search.api_errors import ApiError

_R = TypeVar("_R")


class PhotoWorkers:
    """A few threads of their own for work that decodes photos; requests beyond them wait
    in a queue without holding the event loop or the shared thread pool. Not tied to an
    event loop, so it serves any loop the app runs on."""

    def __init__(self, workers: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="photos")

    async def run(self, fn: Callable[..., _R], *args: Any) -> _R:
        return await asyncio.wrap_future(self._pool.submit(fn, *args))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def open_image(data: bytes, field: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decode ``data`` as an RGB image; ``ApiError`` 413 over the limits, 422 if not an
    image."""
    if len(data) > max_bytes:
        raise ApiError(413, field, f"image over {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ApiError(
                        413, field, f"image of {width}x{height} pixels, over {max_pixels:,}"
                    )
                return img.convert("RGB")
    except Image.DecompressionBombError as exc:  # over twice Pillow's default limit
        raise ApiError(413, field, f"image too large to decode ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ApiError(422, field, f"not an image ({exc})") from None
