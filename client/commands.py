"""``fedsearch device ...``: set up a device, show its budget, join the federation."""

from __future__ import annotations

import argparse
import functools
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from common.cli import UsageError, add_config_arguments, config_from_args
from common.passthrough import run_passing_through, started_beside

EXIT_NOT_REGISTERED = 3
DEFAULT_ENDPOINT = "http://127.0.0.1:8000"
SEARCH_CANDIDATES = 50
NOT_REGISTERED_MARK = "Failed to activate SuperNode"

if TYPE_CHECKING:
    from common.training_config import DeviceConfig


def register_device_commands(subparsers: argparse._SubParsersAction) -> None:
    device = subparsers.add_parser(
        "device",
        help="a shopper's device: keys, encrypted store, privacy budget, joining the federation",
        description="Device commands. A device folder holds the device's SuperNode key pair "
        "(made on the device), the federation's CA certificate, the model-signing public "
        "key and the encrypted local store (key: $FEDSEARCH_DEVICE_KEY or store.key).",
    )
    sub = device.add_subparsers(dest="device_command", metavar="STEP", required=True)
    device.set_defaults(subcommands=sub)  # other packages add device steps (import-history)

    init = sub.add_parser(
        "init",
        help="create a device folder (keys, empty encrypted store, privacy policy)",
        description="Create a device folder: the device's SuperNode key pair (made here), "
        "copies of the federation's CA and model-signing key, an empty encrypted store, and "
        "the device's own privacy policy (device.toml). The device refuses every round whose "
        "plan breaks its policy, whatever the server asks.",
        epilog="example: fedsearch device init dev1 --superlink 127.0.0.1:9092 --ca "
        "deploy/ca/ca.crt --signing-key deploy/signing/signing.pub --max-epsilon-user 8",
    )
    init.add_argument("folder", type=Path)
    init.add_argument(
        "--superlink",
        required=True,
        metavar="HOST:PORT",
        help="the federation's Fleet gateway (`fedsearch deploy gateway`), e.g. 127.0.0.1:9092",
    )
    init.add_argument("--ca", type=Path, required=True, help="the federation's CA certificate")
    init.add_argument(
        "--signing-key", type=Path, required=True, help="the server's signing.pub (Ed25519)"
    )
    init.add_argument("--endpoint", default="", help="search service URL, e.g. http://host:8000")
    init.add_argument("--name", help="device name (default: the folder name)")
    init.add_argument(
        "--runtime-port", type=int, default=9094, help="local port of the SuperNode Runtime API"
    )
    _add_policy_arguments(init)
    init.set_defaults(handler=user_errors(_init))

    budget = sub.add_parser("budget", help="show the device's privacy budget and its store")
    budget.add_argument("folder", type=Path)
    add_config_arguments(budget)
    budget.set_defaults(handler=user_errors(_budget))

    sync = sub.add_parser(
        "sync",
        help="fetch the newest published model version and verify it on the device",
        description="Fetch the model versions newer than the device's copy from the search "
        "service (or a registry folder) into <folder>/registry and verify them with the "
        "deployment's signing key. Exits with status 1 when the newest is refused (the "
        "device keeps the version it had).",
    )
    sync.add_argument("folder", type=Path)
    sync.add_argument(
        "--from",
        dest="source",
        metavar="URL_OR_FOLDER",
        help="search service URL or registry folder (default: the device's endpoint, else "
        "http://127.0.0.1:8000)",
    )
    sync.set_defaults(handler=user_errors(_sync))

    search = sub.add_parser(
        "search",
        help="search as this device: its verified model copy scores, its user vector reranks",
        description="One search through the SDK (client.sdk.DeviceClient): the service "
        "returns candidates and vectors; the device scores them with its own verified copy "
        "of the newest model version (fedsearch device sync), reranks them with its private "
        "user vector and logs the search in its encrypted store. Exits with status 1 when "
        "the device's copy is refused.",
    )
    search.add_argument("folder", type=Path)
    search.add_argument("text", help="the query")
    search.add_argument("--k", type=int, default=5, help="results to show (default: 5)")
    search.add_argument(
        "--endpoint", help="search service URL (default: the device's, else http://127.0.0.1:8000)"
    )
    search.set_defaults(handler=user_errors(_search))

    join_text = "start this device's SuperNode (TLS, device auth)"
    join = sub.add_parser(
        "join",
        help=join_text,
        description=f"{join_text.capitalize()}. Exits with status {EXIT_NOT_REGISTERED} when "
        "the federation refuses the device because its key is not registered.",
    )
    join.add_argument("folder", type=Path)
    join.add_argument(
        "--superlink", metavar="HOST:PORT", help="override the Fleet gateway's address"
    )
    join.add_argument("--print-only", action="store_true", help="print the command only")
    join.set_defaults(handler=user_errors(_join))


POLICY_OPTIONS = {
    "max_epsilon_user": "refuse federations that may spend more user-level epsilon",
    "max_epsilon_server": "decline rounds once the server's view of this device would pass it",
    "min_noise_multiplier": "refuse rounds with less noise per unit of clip norm",
    "max_clipping_norm": "refuse rounds that clip updates to a larger norm",
}


def _add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    from common.training_config import DeviceConfig

    defaults = DeviceConfig()
    policy = parser.add_argument_group("privacy policy (written to device.toml)")
    for key, text in POLICY_OPTIONS.items():
        default = getattr(defaults, key)
        flag = f"--{key.replace('_', '-')}"
        policy.add_argument(flag, type=float, metavar="X", help=f"{text} (default {default:g})")
    policy.add_argument(
        "--allow-without-secagg",
        action="store_true",
        help="take part in rounds without SecAgg+ (the server then sees this device's update)",
    )


def _policy(args: argparse.Namespace) -> dict[str, float | bool]:
    policy: dict[str, float | bool] = {
        key: getattr(args, key) for key in POLICY_OPTIONS if getattr(args, key) is not None
    }
    if args.allow_without_secagg:
        policy["require_secagg"] = False
    return policy


def user_errors(handler: Callable[[argparse.Namespace], int]) -> Callable:
    """Store and key-file problems are the user's to fix: one line, no traceback."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from client.store import DeviceStoreError
        from common.security.keyfiles import KeyFileError

        try:
            return handler(args)
        except (DeviceStoreError, KeyFileError) as exc:
            raise UsageError(str(exc)) from exc

    return run


def _init(args: argparse.Namespace) -> int:
    from client.device import DeviceInfo, init_device

    if not 0 < args.runtime_port < 65536:
        raise UsageError(f"--runtime-port: {args.runtime_port} is not in 1..65535")
    if ":" not in args.superlink:
        raise UsageError(f"--superlink: expected HOST:PORT, got {args.superlink!r}")
    info = DeviceInfo(
        name=args.name or args.folder.resolve().name,
        superlink=args.superlink,
        endpoint=args.endpoint,
        runtime_port=args.runtime_port,
    )
    try:
        device = init_device(
            args.folder, info, ca_cert=args.ca, signing_pub=args.signing_key, policy=_policy(args)
        )
    except FileExistsError as exc:
        raise UsageError(str(exc)) from exc
    print(f"device {info.name}: {device.folder}")
    print(f"  privacy policy: {device.config_file} ({describe_policy(device.device_config())})")
    print(f"  send {device.auth_pub} to the operator (fedsearch deploy register ...)")
    print(f"  {device.auth_key} and {device.store_key} stay on this device")
    return 0


def _budget(args: argparse.Namespace) -> int:
    from client.device import Device
    from client.local_training import record_epsilon
    from client.privacy import ServerView

    device = Device(args.folder)
    name = device.info.name
    settings = config_from_args(args).device
    store = device.open_store()
    log = store.searches()
    state = store.load_state()
    spent = record_epsilon(state.accountant, settings.delta)
    rounds = state.info.get("rounds_trained", 0)
    print(
        f"device {name}: {len(log)} searches logged, "
        f"{sum(e.clicked is not None for e in log)} with a click"
    )
    print(
        f"  record-level privacy: epsilon {spent:.3f} of {settings.epsilon_budget:g} "
        f"spent at delta {settings.delta:g} ({rounds} rounds trained)"
    )
    left = settings.epsilon_budget - spent
    print(f"  budget left: {left:.3f}" if left > 0 else "  budget spent: the device stops training")
    view = ServerView.from_info(state.info)
    at = f" at delta {view.delta:.3g}" if view.rounds else ""
    print(
        f"  against the server: epsilon {view.epsilon():.3f}{at} after {view.rounds} rounds "
        f"it sent data in (at most {settings.max_epsilon_server:g}; the federation's ledger "
        "holds against readers of published versions)"
    )
    print(f"  privacy policy: {describe_policy(device.device_config())}")
    user = state.user_vector is not None
    print(f"  personal state: user vector {'set' if user else 'not set'}")
    return 0


def _sync(args: argparse.Namespace) -> int:
    from client.device import Device
    from client.sync import sync_device

    device = Device(args.folder)
    source = args.source or device.info.endpoint or DEFAULT_ENDPOINT
    try:
        result = sync_device(device, source)
    except (ConnectionError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    fetched = ", ".join(result.fetched) or "nothing new"
    print(f"device {device.info.name}: fetched {fetched}; holds {result.held or 'no version'}")
    if result.refused:
        print(f"device {device.info.name}: {result.refused}", file=sys.stderr)
        return 1
    return 0


def _search(args: argparse.Namespace) -> int:
    from client.device import Device
    from client.sdk import (
        ADAPTER_MARK_FILE,
        DeviceClient,
        DeviceModelError,
        SearchError,
        verified_adapters,
    )
    from common.security.signing import load_public_key

    device = Device(args.folder)
    endpoint = args.endpoint or device.info.endpoint or DEFAULT_ENDPOINT
    if not 1 <= args.k <= SEARCH_CANDIDATES:
        raise UsageError(f"--k: must be in 1..{SEARCH_CANDIDATES}")
    model = verified_adapters(
        device.registry_dir,
        load_public_key(device.signing_pub),
        state_file=device.folder / ADAPTER_MARK_FILE,
        base_model=device.base_model(),
    )
    store = device.open_store()
    try:
        with DeviceClient(endpoint, store, model=model, candidates=SEARCH_CANDIDATES) as sdk:
            results = sdk.search(text=args.text, k=args.k)
    except DeviceModelError as exc:
        print(f"device {device.info.name}: {exc}", file=sys.stderr)
        return 1
    except SearchError as exc:
        raise UsageError(str(exc)) from exc
    print(
        f"scored by {results.scored_by} (the service serves {results.model_version}), "
        f"reranked on the device from {results.candidates} candidates"
    )
    if results.model_error:
        print(f"  note: {results.model_error}")
    for rank, hit in enumerate(results.hits, 1):
        print(f"  {rank}. {hit.title} [{hit.id}] {hit.score:.3f}")
    return 0


def describe_policy(settings: DeviceConfig) -> str:
    """The device's policy in one line."""
    secagg = "SecAgg+ required" if settings.require_secagg else "SecAgg+ optional"
    noise = "device noise required" if settings.require_noise else "device noise optional"
    return (
        f"{secagg}, {noise}, noise multiplier >= {settings.min_noise_multiplier:g}, "
        f"clip norm <= {settings.max_clipping_norm:g}, "
        f"epsilon_user <= {settings.max_epsilon_user:g}, "
        f"epsilon against the server <= {settings.max_epsilon_server:g}"
    )


def _join(args: argparse.Namespace) -> int:
    from client.device import Device, device_env, superexec_command, supernode_command

    device = Device(args.folder)
    name = device.info.name  # fails clearly if the folder is not a device
    device.open_store()  # fail now, not inside the ClientApp, if the key is wrong
    command = supernode_command(device, superlink=args.superlink)
    executor = superexec_command(device)
    print(f"$ {shlex.join(command)}\n$ {shlex.join(executor)} &", flush=True)
    if args.print_only:
        return 0
    env = device_env(device)
    with started_beside(executor, env):
        status, output = run_passing_through(command, env)
    if status != 0 and NOT_REGISTERED_MARK in output:
        print(
            f"device {name}: the SuperLink refused this device: its key {device.auth_pub} is "
            "not registered (the operator runs `fedsearch deploy register` with it)",
            file=sys.stderr,
        )
        return EXIT_NOT_REGISTERED
    return status
