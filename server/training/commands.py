"""Server-side commands: ``pretrain``."""

from __future__ import annotations

import argparse

from common.cli import add_config_arguments, config_from_args


def register_training_commands(subparsers: argparse._SubParsersAction) -> None:
    pretrain = subparsers.add_parser(
        "pretrain",
        help="train the vision tower on the catalog (text tower locked) and evaluate it",
        description="CLIP-style training of the vision tower on the fashion catalog, "
        "with the MiniLM text tower locked; saves a versioned checkpoint and prints "
        "retrieval quality on held-out items.",
    )
    add_config_arguments(pretrain)
    pretrain.set_defaults(handler=_pretrain)


def _pretrain(args: argparse.Namespace) -> int:
    from server.training.pretrain import run_pretrain

    run_pretrain(config_from_args(args))
    return 0
