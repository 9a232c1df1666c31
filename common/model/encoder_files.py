"""Where the base encoder's files are and what they are called, without loading torch.

The search service needs the encoder's version label and width before (or instead of)
building it: ``resolve_encoder`` and ``embedding_dim`` read them off the folders and config
files. ``common.model.encoder`` builds the model itself.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from common.model.errors import EncoderError
from common.security.versions import latest_version, read_manifest

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
PACKAGE_PREFIX = "pkg:"
LOCAL_DIR_PREFIX = "local-dir:"
ENCODER_WEIGHTS_FILE = "open_clip_model.safetensors"
ENCODER_CONFIG_FILE = "open_clip_config.json"


def builtin_models() -> list[str]:
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))


def embedding_dim(model: str) -> int:
    """The embedding dimension of ``model`` read from its config (no weights loaded)."""
    if model.startswith(LOCAL_DIR_PREFIX):
        path = Path(model.removeprefix(LOCAL_DIR_PREFIX)) / ENCODER_CONFIG_FILE
        if not path.is_file():
            raise EncoderError(f"{model}: no {ENCODER_CONFIG_FILE} in {path.parent}")
        return int(json.loads(path.read_text(encoding="utf-8"))["model_cfg"]["embed_dim"])
    builtin = MODEL_CONFIG_DIR / f"{model}.json"
    if builtin.is_file():
        return int(json.loads(builtin.read_text(encoding="utf-8"))["embed_dim"])
    import open_clip  # other open_clip names: its registry (imports torch)

    model_cfg = open_clip.get_model_config(model)
    if model_cfg is None:
        raise EncoderError(f"unknown model {model!r}; built-in: {', '.join(builtin_models())}")
    return int(model_cfg["embed_dim"])


def resolve_package_path(reference: str) -> str:
    """``pkg:module`` -> the model folder shipped inside that installed Python package."""
    module_name = reference.removeprefix(PACKAGE_PREFIX)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EncoderError(f"{reference}: package {module_name!r} is not installed") from exc
    shipped = Path(module.__file__).parent / "model" if module.__file__ else None
    folder = getattr(module, "MODEL_DIR", shipped)
    if folder is None or not Path(folder).is_dir():
        raise EncoderError(f"{reference}: no model folder at {folder}")
    return str(Path(folder))


def latest_checkpoint(model: str, encoder_dir: Path) -> Path:
    folder = latest_version(encoder_dir)
    if folder is None:
        raise EncoderError(
            f"no pretrained encoder under {encoder_dir}: run `fedsearch pretrain` first "
            "(paths.encoder_dir or $FEDSEARCH_ENCODER_DIR name another folder), or set "
            'encoder.pretrained = "none" for an untrained vision tower'
        )
    trained = read_manifest(folder).get("model")
    if trained != model:
        raise EncoderError(f"{folder} holds {trained!r}, not {model!r}")
    return folder


def resolve_encoder(
    model: str, pretrained: str | None = "latest", *, encoder_dir: str | Path
) -> tuple[str | None, str]:
    """(weights file or open_clip tag or None, version label) of an encoder, without building
    it. The label is what ``Encoder.version`` and a published version's ``base_model`` say."""
    if pretrained in ("none", ""):
        pretrained = None
    if model.startswith(LOCAL_DIR_PREFIX):
        return None, _version_label(Path(model.removeprefix(LOCAL_DIR_PREFIX)))
    if pretrained == "latest":
        pretrained = str(latest_checkpoint(model, Path(encoder_dir)))
    if pretrained and Path(pretrained).is_dir():
        return str(Path(pretrained) / ENCODER_WEIGHTS_FILE), _version_label(Path(pretrained))
    return pretrained, f"{model}:{pretrained or 'untrained'}"


def _version_label(folder: Path) -> str:
    manifest = read_manifest(folder) if (folder / "manifest.json").is_file() else {}
    sha = manifest.get("files", {}).get(ENCODER_WEIGHTS_FILE, "")[:12]
    return f"{manifest.get('model', folder.name)}:{folder.name}:{sha}".rstrip(":")
