"""The README's examples are real: every TOML block loads, and its values are the defaults
the code has (so the documented defaults cannot drift from the code); every ``fedsearch
simulate`` command it shows passes the checks the command makes before its first round."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

from common.cli import build_parser
from common.config import Config, load_config
from common.federation.run_spec import RunSpec

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


def readme_commands(program: str) -> list[list[str]]:
    """The README's shell commands that start with ``program`` (continued lines joined,
    comments dropped), as argv after "fedsearch"."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith(program + " "):
                commands.append(shlex.split(line, comments=True)[1:])  # after "fedsearch"
    return commands


SIMULATE_COMMANDS = [
    argv for argv in readme_commands("fedsearch simulate") if "--resume" not in argv
]


def test_the_readme_shows_simulate_commands() -> None:
    assert len(SIMULATE_COMMANDS) >= 6
    assert any("--no-dp" in argv for argv in SIMULATE_COMMANDS)


@pytest.mark.parametrize("argv", SIMULATE_COMMANDS, ids=" ".join)
def test_each_simulate_command_is_one_its_simulated_devices_accept(argv: list[str]) -> None:
    """What ``fedsearch simulate`` checks before its first round (the config, the devices'
    policy), for each command the README shows; the run itself is not started."""
    from simulation.commands import sized_run_config
    from simulation.engine import check_device_policy

    args = build_parser().parse_args(argv)
    config = sized_run_config(args, secagg=False if args.no_secagg else None)
    spec = RunSpec(
        config=config,
        population=args.population,
        num_devices=args.clients or 3024,
        run_dir=Path("unused"),
    )
    check_device_policy(spec)
