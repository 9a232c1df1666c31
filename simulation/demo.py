"""``fedsearch demo``: the main job on the built-in defaults, end to end.

It is the commands a user would type, in order, with the same configuration:
``pretrain`` (skipped when a checkpoint exists), ``simulate`` (a small marketplace federation
with device noise and SecAgg+; its fictional shoppers' ledger starts afresh each time), then
``search`` (one query for two simulated shoppers side by side).
"""

from __future__ import annotations

import argparse
import json

from common.cli import add_config_arguments, config_from_args
from common.security.versions import latest_version

DEMO_QUERY = "casual shoes"


def register_demo_command(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run the main job: pretrain, federated simulation, personalized search",
        description="The main job on the built-in defaults: pretrain the base encoder on the "
        "real fashion catalog (skipped if a checkpoint exists, unless --retrain) and print "
        "its held-out retrieval quality; run a small federated marketplace simulation with "
        "user-level DP and SecAgg+ and print its summary; then search one query for two "
        "simulated shoppers, side by side.",
    )
    add_config_arguments(demo)
    demo.add_argument("--retrain", action="store_true", help="pretrain even if a checkpoint exists")
    demo.add_argument("--shoppers", type=int, default=200, help="simulated shoppers (default 200)")
    demo.add_argument("--per-round", type=int, default=50, help="devices a round (default 50)")
    demo.add_argument("--rounds", type=int, default=5, help="federated rounds (default 5)")
    demo.add_argument("--query", default=DEMO_QUERY, help=f'the search (default "{DEMO_QUERY}")')
    demo.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from common.cli import main

    shared = (["--config", args.config] if args.config else []) + [
        arg for override in args.overrides for arg in ("--set", override)
    ]
    config = config_from_args(args)
    existing = latest_version(config.paths.encoders)
    if existing is None or args.retrain:
        _step("1/3 pretrain the base encoder on the fashion catalog")
        if status := main(["pretrain", *shared]):
            return status
    else:
        from server.training.encoder_eval import encoder_table

        _step(f"1/3 base encoder: {existing} (pass --retrain to train a new one)")
        metrics = json.loads((existing / "metrics.json").read_text(encoding="utf-8"))
        print(encoder_table(metrics["validation"]))
    _step(
        f"2/3 federated simulation: {args.shoppers} shoppers, {args.per_round} a round, "
        f"{args.rounds} rounds, device noise + SecAgg+"
    )
    simulate = [
        "simulate", "--population", "marketplace", "--clients", str(args.shoppers),
        "--per-round", str(args.per_round), "--rounds", str(args.rounds), "--reset-ledger",
    ]  # fmt: skip
    if status := main([*simulate, *shared]):
        return status
    _step(f'3/3 personalized search: "{args.query}" for two simulated shoppers')
    if status := main(["search", args.query, *shared]):
        return status
    print("\nsee it in a browser: fedsearch serve --demo, then open http://127.0.0.1:8000/")
    return 0


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)
