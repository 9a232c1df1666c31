"""The README's configuration examples are real: every TOML block loads, and its values
are the defaults the code has (so the documented defaults cannot drift from the code)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from common.config import Config, load_config

README = Path(__file__).resolve().parents[1] / "README.md"
TOML_BLOCKS = re.findall(r"```toml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_the_readme_has_toml_examples() -> None:
    assert len(TOML_BLOCKS) >= 2


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=lambda b: b.split("\n", 1)[0])
def test_each_toml_block_loads_and_shows_the_defaults(block: str, tmp_path: Path) -> None:
    path = tmp_path / "example.toml"
    path.write_text(block, encoding="utf-8")
    load_config(path)  # unknown keys and bad values raise ConfigError naming the key
    defaults = Config()
    for section, values in tomllib.loads(block).items():
        for key, value in values.items():
            if section == "paths":  # resolved against the machine, documented in comments
                continue
            assert getattr(getattr(defaults, section), key) == value, f"{section}.{key}"
