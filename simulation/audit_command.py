"""``fedsearch audit``: the privacy audit of a federated simulation (``simulation.audit``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli import UsageError, add_config_arguments

EXAMPLES = """\
examples:
  # a run made for auditing: 20 canary devices among 200 shoppers, then its audit
  fedsearch audit --population marketplace --clients 200 --per-round 50 --rounds 5 \\
      --canaries 20 --run-dir runs/audit-marketplace
  # audit a finished run folder again (or any `fedsearch simulate` run: its attacks that
  # need the recorded payloads then show n/a)
  fedsearch audit runs/audit-marketplace

exit status 1 when a check fails (a FAIL line names it), 0 when the run passes.
"""


def register_audit_command(subparsers: argparse._SubParsersAction) -> None:
    audit = subparsers.add_parser(
        "audit",
        help="privacy audit of a federated run: empirical epsilon, reconstruction, "
        "membership inference",
        description="Measures what a simulated federated run leaks. With --population it "
        "first runs a simulation made for auditing: --canaries K canary devices, sampled like "
        "every device, send a fixed random direction at the clipping norm through clipping, "
        "the devices' noise and SecAgg+, and the devices' plain payloads and the server's "
        "sums are recorded. The audit prints the one-shot empirical epsilon of the canaries "
        "(Andrew et al., ICLR 2024) with its confidence interval beside the ledger's epsilon "
        "(same delta, unit user, against whom), the top-10 hit rate of reconstructing clicked "
        "items from one raw update and from the server's noised sum against chance, and the "
        "AUC of membership inference on the published adapter. It fails when the empirical "
        "epsilon's interval lies above the ledger's epsilon.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    audit.add_argument("run_dir", nargs="?", type=Path, metavar="RUN_DIR", help="a run folder")
    audit.add_argument("--population", help="run an audit simulation of retail or marketplace")
    audit.add_argument("--canaries", type=int, default=20, metavar="K", help="default 20")
    audit.add_argument(
        "--unsent", type=int, default=1000, metavar="M", help="canary directions never sent"
    )
    audit.add_argument("--clients", type=int, metavar="N", help="number of real devices")
    audit.add_argument("--rounds", type=int, metavar="R", help="default federation.rounds")
    audit.add_argument("--per-round", type=int, metavar="M", help="expected devices per round")
    audit.add_argument("--no-dp", action="store_true", help="switch user-level DP off")
    audit.add_argument("--run-dir", dest="new_run_dir", type=Path, help="the new run's folder")
    add_config_arguments(audit)
    audit.set_defaults(handler=_audit)


def _audit(args: argparse.Namespace) -> int:
    from simulation.audit import audit_run, audit_simulation, format_audit
    from simulation.commands import sized_run_config
    from simulation.loader import POPULATIONS

    if (args.run_dir is None) == (args.population is None):
        raise UsageError("give either RUN_DIR (audit a finished run) or --population (new run)")
    if args.run_dir is not None:
        run_dir = args.run_dir
    else:
        if args.population not in POPULATIONS:
            raise UsageError(f"--population: one of {', '.join(POPULATIONS)}")
        for name in ("canaries", "unsent"):
            if getattr(args, name) is not None and getattr(args, name) < 2:
                raise UsageError(f"--{name}: must be >= 2")
        config = sized_run_config(args)
        run_dir = audit_simulation(
            config,
            args.population,
            canaries=args.canaries,
            held_out=args.unsent,
            num_devices=args.clients,
            run_dir=args.new_run_dir,
            verbose=args.verbose,
        )
    try:
        report = audit_run(run_dir)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(format_audit(report))
    return 1 if report.failures else 0
