"""Shared fixtures: offline environment, a small catalog, one encoder per session."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from common.config import default_data_dir  # noqa: E402

FASHION = default_data_dir() / "fashion_product_images_small_subset"
RETAIL = default_data_dir() / "online_retail_uci"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    return _require(FASHION)


@pytest.fixture(scope="session")
def retail_dir() -> Path:
    return _require(RETAIL)


@pytest.fixture(scope="session")
def small_catalog(tmp_path_factory, fashion_dir) -> Path:
    """The first 40 items of the real fashion catalog, in the same format, in a new folder."""
    target = tmp_path_factory.mktemp("data") / FASHION.name
    (target / "images").mkdir(parents=True)
    with (fashion_dir / "styles.csv").open(encoding="utf-8", newline="") as src:
        rows = list(csv.reader(src))[:41]
    with (target / "styles.csv").open("w", encoding="utf-8", newline="") as dst:
        csv.writer(dst).writerows(rows)
    for row in rows[1:]:
        shutil.copy(fashion_dir / row[-1], target / row[-1])
    return target


@pytest.fixture(scope="session")
def untrained_encoder():
    """The built-in encoder with an untrained vision tower (MiniLM text tower is real)."""
    from common.model.encoder import create_encoder

    return create_encoder("fedsearch-minilm-rn64", "none")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, small_catalog):
    """A real ``fedsearch pretrain`` run on 40 items for a few steps; returns (config, folder)."""
    from common.config import config_from_dict
    from server.training.pretrain import run_pretrain

    work = tmp_path_factory.mktemp("work")
    config = config_from_dict(
        {
            "paths": {
                "data_dir": str(small_catalog.parent),
                "work_dir": str(work),
                "encoder_dir": str(work / "encoder"),
            },
            "pretrain": {"steps": 4, "batch_size": 16},
        }
    )
    folder, metrics = run_pretrain(config)
    return config, folder, metrics


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: one thread avoids spinning on a shared 2-core machine (~7x faster)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def speak():
    """``speak(text, voice="en-us+klatt", speed=150)`` -> WAV bytes synthesized by espeak-ng
    (skips when it is missing; CI installs it). Klatt is the voice pocketsphinx hears best."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (Debian: apt-get install -y espeak-ng)")
    from server.search.speech_bench import synthesize

    def say(text: str, voice: str = "en-us+klatt", speed: int = 150) -> bytes:
        return synthesize(text, voice, speed)

    return say
