"""Simulation commands: ``simulate``, ``bench-federation``, ``check-query-model`` and
``device import-history``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from client.commands import user_errors
from common.cli import UsageError, add_config_arguments, config_from_args

if TYPE_CHECKING:
    from common.config import Config
    from simulation.poisoning import AttackPlan


def register_simulation_commands(subparsers: argparse._SubParsersAction) -> None:
    simulate = subparsers.add_parser(
        "simulate",
        help="run a federated simulation (DP + SecAgg+) and write its report",
        description="Federated training of the query adapter on a population of simulated "
        "devices, through `flwr run` on a local simulation-mode SuperLink (Ray): SecAgg+ with "
        "user-level DP noise added by the devices, and the population's privacy ledger, unless "
        "switched off. Writes per-round metrics, a summary table with the baselines, the "
        "published versions' exact evaluation, plots and the shoppers' user vectors into the "
        "run folder, and prints the summary.",
    )
    simulate.add_argument(
        "--population", help="retail (real customers) or marketplace (simulated); required "
        "unless --resume"
    )  # fmt: skip
    simulate.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="finish the simulation in RUN_DIR whose server was killed, after its last "
        "recorded round, with its own config and population (the ledger keeps its charges)",
    )
    simulate.add_argument(
        "--clients",
        type=int,
        metavar="N",
        help="number of devices (marketplace: shoppers, default population.shoppers; "
        "retail: a seeded sample of customers, default all)",
    )
    simulate.add_argument("--rounds", type=int, metavar="R", help="default federation.rounds")
    simulate.add_argument(
        "--per-round",
        type=int,
        metavar="M",
        help="expected devices per round (federation.clients_per_round)",
    )
    simulate.add_argument("--no-dp", action="store_true", help="switch user-level DP off")
    simulate.add_argument("--no-secagg", action="store_true", help="switch SecAgg+ off")
    simulate.add_argument("--no-baselines", action="store_true", help="skip the baselines")
    simulate.add_argument("--run-dir", type=Path, help="default <work_dir>/simulations/<name>")
    simulate.add_argument(
        "--reset-ledger",
        action="store_true",
        help="start the simulated population's privacy ledger afresh (its people are "
        "fictional); by default every run on the same population composes",
    )
    simulate.add_argument(
        "--ray-address",
        default="",
        metavar="HOST:PORT",
        help="run on this existing Ray cluster (every node needs fedsearch installed and the "
        "run folder on a shared filesystem)",
    )
    simulate.add_argument(
        "--attack",
        metavar="KIND:FRACTION[:BOOST]",
        help="poisoning devices (simulation only): KIND boost (model replacement), target "
        "(one item to the top for one query) or signflip; FRACTION of the devices, seeded "
        "from federation.seed; BOOST scales their update (default 1/FRACTION)",
    )
    simulate.add_argument(
        "--defence",
        choices=("dp-clipping", "sum-bound", "verified-norm"),
        default="dp-clipping",
        help="with --attack: dp-clipping (the devices' clipping alone: attackers skip it), "
        "sum-bound (the server refuses a round whose noised sum no honest cohort could "
        "send: federation.sum_bound; attackers stay under it) or verified-norm (emulated "
        "per-device norm proofs: attackers held to the clipping norm); see README, poisoning",
    )
    add_config_arguments(simulate)
    simulate.set_defaults(handler=_simulate)

    bench = subparsers.add_parser(
        "bench-federation",
        help="round wall time per device at 200 and 1,000 devices a round, memory, bytes",
        description="Runs a few rounds of the marketplace population (10,000 simulated "
        "shoppers by default) with SecAgg+ and the devices' DP noise at each cohort size, "
        "and the Online Retail population, and prints the round wall time per participating "
        "device (the median after the first round, which carries the start-up), peak memory, "
        "the time of one local update and the bytes a device sends per round. Writes "
        "bench.json.",
    )
    bench.add_argument("--shoppers", type=int, default=10_000, help="marketplace shoppers")
    bench.add_argument(
        "--per-round", default="200,1000", help="comma-separated expected devices per round"
    )
    bench.add_argument("--rounds", type=int, default=3, help="rounds per run (default 3)")
    bench.add_argument("--skip-retail", action="store_true")
    bench.add_argument("--out", type=Path, help="default <work_dir>/bench/federation-<time>")
    add_config_arguments(bench)
    bench.set_defaults(handler=_bench)

    check = subparsers.add_parser(
        "check-query-model",
        help="base nDCG@10 of a population's held-out searches: compressed query encoder vs "
        "the base encoder",
        description="Loads a simulated population with the base encoder and ranks its "
        "held-out searches over the whole catalog twice: with the base encoder's float32 "
        "query vectors and with a compressed query encoder's: the distilled student "
        "(encoder.query_model, default the latest `fedsearch distill` version), or, with "
        "--set search.query_precision=int8 (or bfloat16) and no student named, the base "
        "encoder at that precision. Prints nDCG@10, HR@10 and MRR of both.",
    )
    check.add_argument("--population", required=True, help="retail or marketplace")
    check.add_argument("--clients", type=int, metavar="N", help="number of devices")
    add_config_arguments(check)
    check.set_defaults(handler=_check_query_model)
    _register_import_history(subparsers.choices["device"].get_default("subcommands"))


def _register_import_history(device_steps: argparse._SubParsersAction) -> None:
    """``fedsearch device import-history``: fill a device's store from a population."""
    imp = device_steps.add_parser(
        "import-history",
        help="import one device's history from a population (real or simulated shopper)",
        description="Write one device's searches (query vector, shown items, click) from "
        "the same populations the simulation uses into the device's encrypted store, with "
        "the public catalog item vectors it trains against.",
    )
    imp.add_argument("folder", type=Path)
    imp.add_argument("--population", default="retail", help="retail (default) or marketplace")
    imp.add_argument(
        "--index", type=int, required=True, help="which device of the population (0-based)"
    )
    imp.add_argument(
        "--num-devices", type=int, default=None, help="population size the index refers to"
    )
    add_config_arguments(imp)
    imp.set_defaults(handler=user_errors(_import_history))


def sized_run_config(args: argparse.Namespace, **federation: object) -> Config:
    """A new simulation's config from its command's ``--clients``, ``--rounds``,
    ``--per-round`` and ``--no-dp`` (checked), with ``federation`` overrides on top."""
    from simulation.engine import with_overrides

    for name in ("clients", "rounds", "per_round"):
        value = getattr(args, name)
        least = 2 if name == "clients" else 1
        if value is not None and value < least:
            raise UsageError(f"--{name.replace('_', '-')}: must be >= {least}")
    return with_overrides(
        config_from_args(args),
        rounds=args.rounds,
        clients_per_round=args.per_round,
        dp=False if args.no_dp else None,
        **federation,
    )


def _simulate(args: argparse.Namespace) -> int:
    from simulation.report import resume_and_report, simulate_and_report, table

    if args.resume is not None:
        _check_resume(args)
        summary = resume_and_report(
            args.resume,
            baselines=not args.no_baselines,
            ray_address=args.ray_address,
            verbose=args.verbose,
        )
        print(table(summary))
        print(f"report: {summary['run_dir']}")
        return 0
    if not args.population:
        raise UsageError("--population: required (retail or marketplace) unless --resume")
    attack = _attack_plan(args)
    config = sized_run_config(args, secagg=False if args.no_secagg else None)
    summary = simulate_and_report(
        config,
        args.population,
        num_devices=args.clients,
        run_dir=args.run_dir,
        baselines=not args.no_baselines,
        reset_ledger=args.reset_ledger,
        ray_address=args.ray_address,
        attack=attack,
        verbose=args.verbose,
    )
    print(table(summary))
    print(f"report: {summary['run_dir']}")
    return 0


def _check_resume(args: argparse.Namespace) -> None:
    """--resume takes the run's own settings: refuse options that would change them."""
    changed = [
        option
        for option, value in (
            ("--population", args.population),
            ("--clients", args.clients),
            ("--rounds", args.rounds),
            ("--per-round", args.per_round),
            ("--run-dir", args.run_dir),
            ("--config", args.config),
            ("--set", args.overrides),
            ("--attack", args.attack),
        )
        if value
    ] + [flag for flag in ("--no-dp", "--no-secagg", "--reset-ledger") if _flag(args, flag)]
    if changed:
        raise UsageError(f"--resume: the run keeps its own settings; drop {', '.join(changed)}")
    if not (args.resume / "app" / "pyproject.toml").is_file():
        raise UsageError(f"--resume: {args.resume} is not a simulation run folder")


def _flag(args: argparse.Namespace, flag: str) -> bool:
    return bool(getattr(args, flag.lstrip("-").replace("-", "_")))


def _attack_plan(args: argparse.Namespace) -> AttackPlan | None:
    from simulation.poisoning import AttackPlan, parse_attack

    if args.attack is None:
        if args.defence != "dp-clipping":
            raise UsageError("--defence: only with --attack")
        return None
    try:
        kind, fraction, boost = parse_attack(args.attack)
    except ValueError as error:
        raise UsageError(f"--attack: {error}") from None
    return AttackPlan(kind, fraction, boost, args.defence)


def _bench(args: argparse.Namespace) -> int:
    from simulation.bench import format_bench, run_bench

    try:
        per_round = tuple(int(m) for m in args.per_round.split(",") if m.strip())
    except ValueError:
        raise UsageError(f"--per-round: expected numbers, got {args.per_round!r}") from None
    if args.shoppers < 2 or args.rounds < 2 or not per_round or min(per_round) < 2:
        raise UsageError("--shoppers and --per-round must be >= 2, --rounds >= 2")
    figures = run_bench(
        config_from_args(args),
        shoppers=args.shoppers,
        per_round=per_round,
        rounds=args.rounds,
        retail=not args.skip_retail,
        out=args.out,
    )
    print(format_bench(figures))
    return 0


def _import_history(args: argparse.Namespace) -> int:
    from client.device import BASE_MODEL_INFO, Device, import_searches, save_public_items
    from client.store import PersonalState
    from simulation.loader import load_population

    device = Device(args.folder)
    device.info  # noqa: B018 - fails clearly if the folder is not a device
    config = config_from_args(args)
    population = load_population(args.population, config, num_devices=args.num_devices)
    if not 0 <= args.index < len(population.devices):
        raise UsageError(f"--index: {args.index} is not in 0..{len(population.devices) - 1}")
    data = population.devices[args.index]
    save_public_items(device, population.item_ids, population.item_vectors)
    count = import_searches(device, data, population.item_ids, population.item_vectors)
    encoder = str(population.info["encoder"])

    def record_encoder(state: PersonalState) -> PersonalState:
        state.info[BASE_MODEL_INFO] = encoder
        return state

    device.open_store().update_state(record_encoder)
    print(f"imported {count} searches of {data.device_id} into {device.store_dir}")
    print(f"  public catalog: {len(population.item_ids):,} items in {device.public_items}")
    print(f"  base encoder: {encoder}")
    return 0


def _check_query_model(args: argparse.Namespace) -> int:
    from simulation.loader import POPULATIONS
    from simulation.query_model_check import compare_query_models, format_comparison

    if args.population not in POPULATIONS:
        raise UsageError(f"--population: one of {', '.join(POPULATIONS)}")
    if args.clients is not None and args.clients < 1:
        raise UsageError("--clients: must be >= 1")
    config = config_from_args(args)
    result = compare_query_models(config, args.population, num_devices=args.clients)
    print(format_comparison(result, config.evaluation.k))
    return 0
