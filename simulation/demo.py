"""``fedsearch demo``: the main job on the built-in defaults, end to end."""

from __future__ import annotations

import argparse

from common.cli import add_config_arguments, config_from_args
from common.config import Config
from common.versioning import latest_version


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run the main job: pretrain the encoder and print its retrieval quality",
        description="The main job on the built-in defaults: pretrain the base encoder on the "
        "real fashion catalog (skipped if a checkpoint exists, unless --retrain) and print "
        "its retrieval quality on held-out items.",
    )
    add_config_arguments(demo)
    demo.add_argument("--retrain", action="store_true", help="pretrain even if a checkpoint exists")
    demo.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    _ensure_encoder(config, retrain=args.retrain)
    return 0


def _ensure_encoder(config: Config, *, retrain: bool) -> None:
    import json

    from server.encoder_eval import format_table
    from server.pretrain import run_pretrain

    existing = latest_version(config.paths.encoders)
    if existing is None or retrain:
        print("== 1. pretrain the base encoder on the fashion catalog")
        run_pretrain(config)
        return
    print(f"== 1. base encoder: using {existing} (pass --retrain to train a new one)")
    metrics = json.loads((existing / "metrics.json").read_text(encoding="utf-8"))
    print(format_table(metrics["validation"]))
