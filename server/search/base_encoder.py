"""The search service's base encoder: now, or built when first needed.

Under ``search.query_runtime = "numpy"`` query texts never touch the base encoder, so the
service starts with a ``DeferredEncoder``: the encoder's version label and width, read off
its files, and its open_clip model (and torch) built on the first photo query, item upsert
or catalog build. Until then the serving process does not import torch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from common.config import Config
from common.model.encoder_files import embedding_dim, resolve_encoder

if TYPE_CHECKING:
    from common.model.encoder import Encoder

log = logging.getLogger(__name__)


def encoder_from_config(config: Config) -> Encoder:
    from common.model import encoder  # torch, imported when an encoder is first built

    return encoder.create_encoder(
        config.encoder.model,
        config.encoder.pretrained,
        encoder_dir=config.paths.encoders,
        device=config.encoder.device,
    )


class DeferredEncoder:
    """``version`` and ``dim`` of the configured base encoder; ``load()`` builds it once."""

    def __init__(self, config: Config) -> None:
        enc = config.encoder
        self.config = config
        self.version = resolve_encoder(
            enc.model, enc.pretrained, encoder_dir=config.paths.encoders
        )[1]
        self.dim = embedding_dim(enc.model)
        self._encoder: Encoder | None = None
        self._lock = threading.Lock()

    def load(self) -> Encoder:
        with self._lock:
            if self._encoder is None:
                log.info("building the base encoder %s (photos and items need it)", self.version)
                encoder = encoder_from_config(self.config)
                if encoder.version != self.version or encoder.dim != self.dim:
                    raise RuntimeError(
                        f"the base encoder changed on disk: expected {self.version} "
                        f"({self.dim}-d), built {encoder.version} ({encoder.dim}-d)"
                    )
                threads = self.config.search.torch_threads
                if threads > 0:
                    import torch

                    torch.set_num_threads(threads)
                self._encoder = encoder
            return self._encoder

    def encode_image(self, images: Sequence[Any]) -> np.ndarray:
        return self.load().encode_image(images)

    def encode_items(
        self,
        titles: Sequence[str | None],
        images: Sequence[Any],
        *,
        text_weight: float = 0.5,
        image_weight: float = 0.5,
    ) -> np.ndarray:
        return self.load().encode_items(
            titles, images, text_weight=text_weight, image_weight=image_weight
        )


BaseEncoder = Union["Encoder", DeferredEncoder]


def base_encoder(config: Config) -> BaseEncoder:
    """The deferred encoder under the numpy query runtime, else the encoder built now."""
    if config.search.query_runtime == "numpy":
        return DeferredEncoder(config)
    return encoder_from_config(config)


def built(encoder: BaseEncoder) -> Encoder:
    """The encoder itself, built now if it was deferred."""
    return encoder.load() if isinstance(encoder, DeferredEncoder) else encoder
