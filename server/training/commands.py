"""Server-side commands: ``pretrain`` and ``distill``."""

from __future__ import annotations

import argparse

from common.cli import UsageError, add_config_arguments, config_from_args


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

    distill = subparsers.add_parser(
        "distill",
        help="distill a small, fast query text encoder from the base encoder's text tower",
        description="Trains a student text tower (a few of MiniLM's layers, feed-forward "
        "blocks pruned) to reproduce the base encoder's query vectors, on catalog text only; "
        "prints its agreement with the teacher, downstream quality, size and speed, and "
        "saves a version under <work_dir>/query_encoder (serve it with encoder.query_model = "
        '"latest"). Item vectors are unchanged.',
    )
    add_config_arguments(distill)
    distill.add_argument("--layers", default="0,5", help="teacher layers to copy (default 0,5)")
    distill.add_argument("--ffn", type=int, default=768, help="feed-forward neurons kept")
    distill.add_argument(
        "--steps",
        type=int,
        default=3000,
        help="training steps; 0 copies the layers untrained (with --layers 0,1,2,3,4,5 "
        "--ffn 1536: the base encoder's text tower itself, for the numpy and onnx runtimes)",
    )
    distill.add_argument("--batch-size", type=int, default=256)
    distill.add_argument("--lr", type=float, default=3e-4)
    distill.add_argument("--max-train", type=int, default=30000, help="training phrases")
    distill.add_argument("--heldout", type=int, default=1000, help="held-out phrases")
    distill.add_argument("--seed", type=int, default=0)
    distill.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    distill.set_defaults(handler=_distill)


def _pretrain(args: argparse.Namespace) -> int:
    from server.training.pretrain import run_pretrain

    run_pretrain(config_from_args(args))
    return 0


def _distill(args: argparse.Namespace) -> int:
    from server.search.base_encoder import encoder_from_config
    from server.training.distill import DistillSettings, run_distill

    try:
        layers = tuple(int(x) for x in args.layers.split(","))
    except ValueError:
        raise UsageError(
            f"--layers: expected comma-separated integers, got {args.layers!r}"
        ) from None
    if not layers or min(layers) < 0:
        raise UsageError("--layers: teacher layer indices, from 0")
    for name in ("ffn", "batch_size", "max_train", "heldout"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}: must be >= 1")
    if args.steps < 0:
        raise UsageError("--steps: must be >= 0")
    if not args.lr > 0:
        raise UsageError("--lr: must be > 0")
    settings = DistillSettings(
        layers=layers,
        ffn=args.ffn,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        heldout=args.heldout,
        max_train=args.max_train,
        seed=args.seed,
    )
    config = config_from_args(args)
    run_distill(config, encoder_from_config(config), settings, threads=args.threads)
    return 0
