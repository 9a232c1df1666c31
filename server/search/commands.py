"""Search commands: ``fedsearch index``, ``serve``, ``search``, ``bench-search``,
``bench-precision``, ``bench-limits`` and ``bench-speech``."""

from __future__ import annotations

import argparse
import functools
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from common.cli import UsageError, add_config_arguments, config_from_args
from server.search.index_kinds import INDEX_KINDS
from server.search.threads import apply_thread_settings

if TYPE_CHECKING:
    from common.config import Config
    from server.search.catalog import Catalog


DEFAULT_VOICES = ("en-us", "en-us+klatt", "en-us+f2", "en-us+m3", "en-gb", "en-gb-x-rp")


def register_search_commands(subparsers: argparse._SubParsersAction) -> None:
    index = subparsers.add_parser(
        "index",
        help="encode the fashion catalog and build the search index",
        description="Encodes every fashion item (title + photo) with the base encoder, "
        "builds a FAISS index and writes the catalog store the service serves. Kinds: exact; "
        "IVF with float32 (ivf), float16 (ivf-fp16) or 8-bit (ivf-sq8) codes; IVF-PQ with "
        "re-scoring on full vectors (ivf-pq). auto: exact up to search.exact_max_items, "
        "above the most exact kind that fits search.index_memory_mb. Recall@10 against "
        "exact search and bytes per item are measured and stored with the index.",
    )
    add_config_arguments(index)
    index.add_argument("--limit", type=int, help="index only the first N items")
    index.add_argument("--kind", choices=("auto", *INDEX_KINDS), default="auto")
    index.set_defaults(handler=_index)

    serve = subparsers.add_parser(
        "serve",
        help="run the search service (web page at /, API docs at /docs)",
        description="Serves the catalog store (built first if missing) with the latest "
        "verified adapter version from the registry, hot-swapping newer ones.",
    )
    add_config_arguments(serve)
    serve.add_argument("--host", help="default: search.host")
    serve.add_argument("--port", type=int, help="default: search.port")
    serve.add_argument("--tls-cert", help="PEM certificate for HTTPS (search.tls_certfile)")
    serve.add_argument("--tls-key", help="its PEM private key (search.tls_keyfile)")
    serve.add_argument("--demo", action="store_true", help="serve /shoppers (search.demo)")
    serve.add_argument(
        "--rollback-to",
        metavar="VERSION",
        help="serve this older registry version and pin it until a newer one is published",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="local experiments only: no admin token, and any host without a signing key",
    )
    serve.set_defaults(handler=_serve)

    search = subparsers.add_parser(
        "search",
        help="one query, side by side for simulated shoppers (in-process, no server)",
        description="Runs the service's pipeline in-process on the served catalog with the "
        "latest verified adapter: the query without personalization and for each shopper "
        "(from the last simulation run's shoppers.json), printed side by side.",
    )
    add_config_arguments(search)
    search.add_argument("text", nargs="?", default="", help="the query text")
    search.add_argument(
        "--audio",
        metavar="FILE",
        help="a spoken query (WAV, 16-bit PCM), alone or with the text: what is heard is "
        "printed and searched",
    )
    search.add_argument(
        "--shopper",
        action="append",
        dest="shoppers",
        metavar="NAME",
        help="a shopper's name (repeatable; default: the first two)",
    )
    search.add_argument("-k", type=int, default=10, help="results per column (default 10)")
    search.set_defaults(handler=_search)

    bench = subparsers.add_parser(
        "bench-search",
        help="benchmark the search service over HTTP (index kinds, workloads, 100k items)",
        description="Builds a 100k-item index of each kind from the catalog's vectors plus "
        "perturbed copies, serves it on 127.0.0.1, sends each workload (uniform: distinct "
        "queries; zipf: repeating ones) from concurrent clients and prints p50/p99 latency, "
        "throughput, server CPU per query by stage, cache hit rate, memory, ANN recall@10 "
        "and the end-to-end/in-process ratio. The query model and precision are the "
        "service's (encoder.query_model, search.query_precision).",
    )
    add_config_arguments(bench)
    bench.add_argument("--items", type=int, default=100_000)
    bench.add_argument("--clients", type=int, default=8)
    bench.add_argument("--requests", type=int, default=2000, help="per kind and workload")
    bench.add_argument(
        "--kinds", default="ivf,ivf-pq", help=f"comma-separated: {', '.join(INDEX_KINDS)}"
    )
    bench.add_argument("--workloads", default="uniform,zipf", help="comma-separated")
    bench.add_argument("--out", help="also write the figures as JSON to this file")
    bench.set_defaults(handler=_bench)

    precision = subparsers.add_parser(
        "bench-precision",
        help="the query text tower in float32, bfloat16 and int8: agreement, speed, size",
        description="Encodes catalog-built queries with the query text tower "
        "(encoder.query_model, else the base encoder's) in float32, bfloat16 and int8 "
        "weights, and with search.query_runtime = numpy or onnx in that runtime's precisions "
        "too; prints each one's cosine to float32, top-10 overlap with float32's answers "
        "over the catalog's items, title->photo R@10 and type P@10 on the validation items, "
        "ms per query alone and in batches of 8 (interleaved), how far a query's vector "
        "alone is from its vector in a batch, and size.",
    )
    add_config_arguments(precision)
    precision.add_argument("--queries", type=int, default=1000, help="compared queries")
    precision.add_argument("--timed", type=int, default=100, help="of them, timed ones")
    precision.add_argument("--rounds", type=int, default=3, help="timing rounds")
    precision.set_defaults(handler=_bench_precision)

    limits = subparsers.add_parser(
        "bench-limits",
        help="attack the search service with oversized and slow input; print its answers",
        description="Serves a small store in a child process and sends 500 MB chunked "
        "bodies, decompression-bomb PNGs, deeply nested JSON, a malformed multipart body "
        "and a slow client; prints each answer, time and the service's memory growth, and "
        "/healthz latency while a 13,000 x 13,000 photo decodes.",
    )
    add_config_arguments(limits)
    limits.add_argument("--items", type=int, default=200, help="store size (default 200)")
    limits.set_defaults(handler=_bench_limits)

    speech = subparsers.add_parser(
        "bench-speech",
        help="benchmark spoken queries: WER, and P@10 spoken vs typed",
        description='Synthesizes category queries ("<colour> <category>", with and without '
        '"for <gender>") with espeak-ng voices and speeds, transcribes them with the '
        "configured recognizer (speech.engine) and searches the served catalog with the words "
        "heard and with the typed text: prints the word error rate and P@10 by category.",
    )
    add_config_arguments(speech)
    speech.add_argument("--queries", type=int, default=240, help="number of queries")
    speech.add_argument(
        "--voices",
        default=",".join(DEFAULT_VOICES),
        help="comma-separated espeak-ng voices (flite:NAME for a flite voice)",
    )
    speech.add_argument("--speeds", default="130,175", help="comma-separated words per minute")
    speech.add_argument("--out", help="also write the figures (and every query) as JSON")
    speech.set_defaults(handler=_bench_speech)


def _user_errors(handler: Callable[[argparse.Namespace], int]) -> Callable:
    """Encoder, store and recognizer problems are the user's to fix: one line, not a
    traceback."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from common.model.errors import EncoderError
        from common.speech.transcript import SpeechError
        from server.search.catalog import CatalogStoreError

        try:
            return handler(args)
        except (EncoderError, CatalogStoreError, SpeechError) as exc:
            raise UsageError(str(exc)) from exc

    return run


@_user_errors
def _index(args: argparse.Namespace) -> int:
    from server.search.base_encoder import encoder_from_config
    from server.search.catalog_build import build_catalog, fashion_items

    config = config_from_args(args)
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit: must be >= 1")
    encoder = encoder_from_config(config)
    catalog = build_catalog(config, encoder, fashion_items(config, args.limit), kind=args.kind)
    info = catalog.index.info
    print(
        f"indexed {len(catalog):,} items into {catalog.folder}: {info.kind} index on "
        f"{catalog.index.backend}, recall@10 vs exact {info.recall_at_10:.4f}"
        + (
            f" (95% lower bound {info.recall_at_10_low:.4f} on {info.recall_queries} queries;"
            f" nlist {info.nlist}, nprobe {info.nprobe})"
            if info.kind != "exact"
            else ""
        )
        + (f", re-scoring the top {info.refine_factor}k" if info.refine_factor else "")
        + f", {info.bytes_per_item:,.0f} bytes per item, encoder {info.encoder_version}"
    )
    catalog.close()
    return 0


@_user_errors
def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.search.http_server import server_config
    from server.search.serve_checks import admin_for_serving, serving_config
    from server.search.service import create_app

    config = serving_config(config_from_args(args), args)
    host = args.host or config.search.host
    port = args.port or config.search.port
    admin, new_token = admin_for_serving(config, host, insecure=args.insecure)
    apply_thread_settings(config.search)
    app = create_app(config, admin=admin)
    if args.rollback_to:
        error = app.state.service.watcher.rollback(args.rollback_to)
        if error is not None:
            raise UsageError(f"--rollback-to: {error}")
    if new_token is not None:
        print(f"admin token (shown once, only its sha256 is kept): {new_token}", flush=True)
    scheme = "https" if config.search.tls_certfile else "http"
    url = f"{scheme}://{host}:{port}"
    print(f"serving on {url}/ (API docs: {url}/docs)", flush=True)
    uvicorn.Server(server_config(app, host, port, config.search)).run()
    return 0


@_user_errors
def _search(args: argparse.Namespace) -> int:
    from server.search.base_encoder import encoder_from_config
    from server.search.catalog_build import open_or_build_catalog
    from server.search.compare import compare_shoppers

    config = config_from_args(args)
    if not (args.text.strip() or args.audio) or len(args.text) > config.search.max_text_chars:
        raise UsageError(f"text: give 1 to {config.search.max_text_chars} characters, or --audio")
    if not 1 <= args.k <= config.search.max_k:
        raise UsageError(f"-k: must be between 1 and {config.search.max_k}")
    audio = _read_audio(args.audio) if args.audio else None
    if not args.verbose:
        _quiet_service_loading()
    encoder = encoder_from_config(config)
    catalog = open_or_build_catalog(config, encoder)
    try:
        text = args.text.strip()
        if audio is not None:
            text = _heard_with(config, catalog, audio, text)
        print(compare_shoppers(config, encoder, catalog, text, names=args.shoppers, k=args.k))
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from exc
    finally:
        catalog.close()
    return 0


SERVICE_LOADING_LOGGERS = (
    "common.model.precision",
    "common.security.trust",
    "server.search.query_model",
    "server.search.spoken",
    "server.search.vector_index",
)


def _quiet_service_loading() -> None:
    """A one-off search prints its results, not the service's start-up report (-v does)."""
    for name in SERVICE_LOADING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _read_audio(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"--audio: cannot read {path} ({exc.strerror})") from exc


def _heard_with(config: Config, catalog: Catalog, audio: bytes, text: str) -> str:
    """``text`` with the words heard in ``audio`` appended (printed first)."""
    from server.search.api import ApiError
    from server.search.spoken import SpokenQueries

    try:
        heard = SpokenQueries(config.speech, catalog.iter_items()).transcribe(audio)
    except ApiError as exc:
        raise UsageError(f"--audio: {exc.message}") from exc
    confidence = "" if heard.confidence is None else f" (confidence {heard.confidence:.2f})"
    print(f'heard "{heard.text}"{confidence}')
    if not heard.text and not text:
        raise UsageError("--audio: no speech recognized in the audio")
    return " ".join(part for part in (text, heard.text) if part)


@_user_errors
def _bench(args: argparse.Namespace) -> int:
    from server.search.bench import run_search_bench
    from server.search.load_generator import WORKLOADS

    kinds = _listed(args.kinds, INDEX_KINDS, "--kinds")
    workloads = _listed(args.workloads, WORKLOADS, "--workloads")
    if args.items < 1000 or args.clients < 1 or args.requests < args.clients:
        raise UsageError("need --items >= 1000, --clients >= 1 and --requests >= --clients")
    run_search_bench(
        config_from_args(args),
        items=args.items,
        clients=args.clients,
        requests=args.requests,
        kinds=kinds,
        workloads=workloads,
        out=args.out,
        command=" ".join(["fedsearch", *map(shlex.quote, sys.argv[1:])]),
    )
    return 0


def _listed(text: str, known: tuple[str, ...], option: str) -> list[str]:
    names = [k.strip() for k in text.split(",") if k.strip()]
    for name in names:
        if name not in known:
            raise UsageError(f"{option}: unknown {name!r} ({', '.join(known)})")
    if not names:
        raise UsageError(f"{option}: name at least one of {', '.join(known)}")
    return names


@_user_errors
def _bench_precision(args: argparse.Namespace) -> int:
    from server.search.bench_precision import run_precision_bench

    if args.queries < args.timed or args.timed < 1 or args.rounds < 1:
        raise UsageError("need --queries >= --timed >= 1 and --rounds >= 1")
    run_precision_bench(
        config_from_args(args), queries=args.queries, timed=args.timed, rounds=args.rounds
    )
    return 0


@_user_errors
def _bench_limits(args: argparse.Namespace) -> int:
    from server.search.bench_limits import print_limits_report, run_limits_bench

    if args.items < 10:
        raise UsageError("--items: must be >= 10")
    print_limits_report(run_limits_bench(config_from_args(args), items=args.items))
    return 0


@_user_errors
def _bench_speech(args: argparse.Namespace) -> int:
    from server.search.speech_bench import SynthesisError, run_speech_bench

    voices = [v.strip() for v in args.voices.split(",") if v.strip()]
    try:
        speeds = [int(s) for s in args.speeds.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--speeds: expected words per minute, got {args.speeds!r}") from None
    if args.queries < 1 or not voices or not speeds or not all(80 <= s <= 450 for s in speeds):
        raise UsageError("need --queries >= 1, a voice, and speeds in 80..450 words per minute")
    try:
        run_speech_bench(
            config_from_args(args),
            queries=args.queries,
            voices=voices,
            speeds=speeds,
            out=args.out,
            command=" ".join(["fedsearch", *map(shlex.quote, sys.argv[1:])]),
        )
    except SynthesisError as exc:
        raise UsageError(str(exc)) from exc
    return 0
