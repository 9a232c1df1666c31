"""The search service's base encoder: now, or built when first needed.

Under ``search.query_runtime = "numpy"`` or ``"onnx"`` query texts never touch the base
encoder, so the service starts with a ``DeferredEncoder``: the encoder's version label and
width, read off its files, and its open_clip model (and torch) built on the first photo
query, item upsert or catalog build (a photo query builds it in its own request thread, not in
the worker that encodes every query). Until then the serving process does not import torch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from common.config import Config
from common.model.encoder_files import (
    LOCAL_DIR_PREFIX,
    embedding_dim,
    latest_checkpoint,
    resolve_encoder,
)
from common.model.errors import EncoderError

if TYPE_CHECKING:
    from common.model.encoder import Encoder

log = logging.getLogger(__name__)


def encoder_from_config(config: Config, pretrained: str | None = None) -> Encoder:
    """The configured base encoder (``pretrained``: instead of ``encoder.pretrained``)."""
    from common.model import encoder  # torch, imported when an encoder is first built

    return encoder.create_encoder(
        config.encoder.model,
        pretrained or config.encoder.pretrained,
        encoder_dir=config.paths.encoders,
        device=config.encoder.device,
    )


class DeferredEncoder:
    """``version`` and ``dim`` of the configured base encoder; ``load()`` builds it once.

    ``encoder.pretrained = "latest"`` is resolved when the service starts, so a checkpoint
    that ``fedsearch pretrain`` writes later is not what a deferred build picks up. A build
    that fails is not retried: each later call gets its error at once.
    """

    def __init__(self, config: Config) -> None:
        enc = config.encoder
        self.config = config
        self._pretrained = enc.pretrained
        if enc.pretrained == "latest" and not enc.model.startswith(LOCAL_DIR_PREFIX):
            self._pretrained = str(latest_checkpoint(enc.model, config.paths.encoders))
        _, self.version = resolve_encoder(
            enc.model, self._pretrained, encoder_dir=config.paths.encoders
        )
        self.dim = embedding_dim(enc.model)
        self._encoder: Encoder | None = None
        self._failure: Exception | None = None
        self._lock = threading.Lock()

    def load(self) -> Encoder:
        with self._lock:
            if self._failure is not None:
                raise EncoderError(f"the base encoder could not be built: {self._failure}")
            if self._encoder is None:
                log.info("building the base encoder %s (photos and items need it)", self.version)
                try:
                    self._encoder = self._build()
                except Exception as exc:
                    self._failure = exc
                    raise
            return self._encoder

    def _build(self) -> Encoder:
        built = encoder_from_config(self.config, self._pretrained)
        if built.version != self.version or built.dim != self.dim:
            raise EncoderError(
                f"expected {self.version} ({self.dim}-d), built {built.version} ({built.dim}-d)"
            )
        threads = self.config.search.torch_threads
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        return built

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
    """The deferred encoder under the numpy and onnx query runtimes, else the encoder built
    now."""
    if config.search.query_runtime != "torch":
        return DeferredEncoder(config)
    return encoder_from_config(config)


def built(encoder: BaseEncoder) -> Encoder:
    """The encoder itself, built now if it was deferred."""
    return encoder.load() if isinstance(encoder, DeferredEncoder) else encoder
