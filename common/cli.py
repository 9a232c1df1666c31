"""The ``fedsearch`` command line.

Each command lives in the package that owns it and is registered by a function named in
the ``fedsearch.commands`` entry-point group of the package metadata (pyproject.toml);
this module only assembles them, in the order of the packages' layers (client and server
before simulation, which extends the device group). It imports none of them itself, so a
device with the client alone has the device commands alone. Heavy imports (torch, flwr,
faiss) happen inside the command handlers, so ``fedsearch --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from importlib import metadata
from typing import Any

from common.config import Config, ConfigError, load_config, parse_override

COMMANDS_GROUP = "fedsearch.commands"
LAYERS = ("common", "client", "server", "simulation")


class UsageError(Exception):
    """Bad command-line input; printed as one line, exit status 2."""


class Terminated(BaseException):
    """The process was sent SIGTERM (``kill``, ``timeout``): unwinds like Ctrl-C (and like
    ``KeyboardInterrupt``, no ``except Exception`` stops it)."""


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within it, SIGTERM raises ``Terminated`` in the main thread, so context managers
    run their exits (the SuperLink and Ray a simulation started are stopped) instead of the
    process dying at once and leaving them behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML config file (default: built-in)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set pretrain.steps=60 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {}
    for text in args.overrides:
        overrides = _deep_merge(overrides, parse_override(text))
    return load_config(args.config, overrides or None)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        out[key] = _deep_merge(out[key], value) if isinstance(out.get(key), dict) else value
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedsearch",
        description="Federated, privacy-preserving, personalized multimodal product search.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for entry in command_entry_points():
        entry.load()(subparsers)
    return parser


def command_entry_points() -> list[metadata.EntryPoint]:
    """The registered command groups, lower layers first (see the module doc)."""

    def layer(entry: metadata.EntryPoint) -> tuple[int, str]:
        package = entry.value.split(".", 1)[0]
        return (LAYERS.index(package) if package in LAYERS else len(LAYERS), entry.name)

    return sorted(metadata.entry_points(group=COMMANDS_GROUP), key=layer)


class _PlainFormatter(logging.Formatter):
    """Our INFO lines as plain sentences; warnings and errors say what they are."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return text if record.levelno <= logging.INFO else f"{record.levelname.lower()}: {text}"


def configure_logging(*, verbose: bool) -> None:
    """Quiet by default: fedsearch's own progress lines and every warning; third-party INFO
    (Flower's round log, transformers, Ray) only with ``-v``, which also adds timestamps,
    logger names and debug lines."""
    handler = logging.StreamHandler()
    if verbose:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_PlainFormatter())
    # force: replace a handler that an import installed first (Opacus does)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, handlers=[handler], force=True
    )
    for package in LAYERS:
        logging.getLogger(package).setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("flwr").setLevel(logging.DEBUG if verbose else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(verbose=args.verbose)
    from common.model.errors import EncoderError

    try:
        with sigterm_unwinds():
            return int(args.handler(args) or 0)
    except (ConfigError, UsageError, FileNotFoundError, EncoderError) as exc:
        print(f"fedsearch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
