"""Typed configuration, loaded from TOML with every key checked.

Each section is a frozen pydantic model with strict types (no string-to-number coercion, a
bool is not a number, an int is accepted for a float). ``load_config`` reads a TOML file and
refuses unknown keys and bad values with a one-line ``ConfigError`` naming the dotted key.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal, cast, get_args

from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from common.config_section import ConfigError, Section
from common.training_config import (
    AdapterConfig,
    CentralizedConfig,
    DeviceConfig,
    EvaluationConfig,
    FederationConfig,
)

__all__ = [
    "REPO_ROOT",
    "RUNTIME_PRECISIONS",
    "TEXT_PRECISIONS",
    "AdapterConfig",
    "CentralizedConfig",
    "Config",
    "ConfigError",
    "DeviceConfig",
    "EncoderConfig",
    "EvaluationConfig",
    "FederationConfig",
    "PathsConfig",
    "PopulationConfig",
    "PretrainConfig",
    "SearchConfig",
    "SpeechConfig",
    "config_from_dict",
    "default_data_dir",
    "load_config",
    "parse_override",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
TextPrecision = Literal["auto", "float32", "bfloat16", "int8"]
QueryRuntime = Literal["torch", "numpy", "onnx"]
TEXT_PRECISIONS: tuple[str, ...] = get_args(TextPrecision)
RUNTIME_PRECISIONS = dict(torch=TEXT_PRECISIONS[1:], numpy=("float32",), onnx=("float32", "int8"))


ENCODER_DIR_ENV = "FEDSEARCH_ENCODER_DIR"


def default_data_dir() -> Path:
    """``$FEDSEARCH_DATA_DIR``, else the ``shared/data`` folder beside the checkout."""
    env = os.environ.get("FEDSEARCH_DATA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def default_encoder_dir() -> Path:
    """``$FEDSEARCH_ENCODER_DIR``, else ``runs/encoder`` in the current folder."""
    env = os.environ.get(ENCODER_DIR_ENV)
    return Path(env) if env else Path("runs") / "encoder"


class PathsConfig(Section):
    """Where data is read from (``data_dir``; "" = ``default_data_dir()``), where
    checkpoints, the registry, indexes and run reports are written (``work_dir``), and where
    ``fedsearch pretrain`` writes the base encoder and ``encoder.pretrained = "latest"``
    finds it (``encoder_dir``; "" = ``default_encoder_dir()``, whatever ``work_dir`` is, so
    the search service, devices and the ServerApp find the same one)."""

    data_dir: str = ""
    work_dir: str = "runs"
    encoder_dir: str = ""

    @property
    def data(self) -> Path:
        return Path(self.data_dir) if self.data_dir else default_data_dir()

    @property
    def work(self) -> Path:
        return Path(self.work_dir)

    @property
    def fashion(self) -> Path:
        return self.data / "fashion_product_images_small_subset"

    @property
    def retail(self) -> Path:
        return self.data / "online_retail_uci"

    @property
    def encoders(self) -> Path:
        return Path(self.encoder_dir) if self.encoder_dir else default_encoder_dir()

    @property
    def registry(self) -> Path:
        return self.work / "registry"


class EncoderConfig(Section):
    """The base encoder (``common.model.encoder.create_encoder``) and its fusion weights.

    ``model``: a built-in ``fedsearch-*`` config, an open_clip model name, a ``local-dir:``
    folder or a checkpoint file. ``pretrained``: an open_clip tag or weights file; for a
    built-in config, ``"latest"`` is the newest ``fedsearch pretrain`` checkpoint.
    ``query_model``: what encodes query texts in the search service: "" the base encoder's
    own text tower; ``"latest"`` the newest ``fedsearch distill`` student under
    ``<work_dir>/query_encoder``; or a student's version folder (checked against its
    manifest's sha256). Items are always encoded by the base encoder.
    """

    model: str = "fedsearch-minilm-rn64"
    pretrained: str = "latest"
    text_weight: float = Field(default=0.5, ge=0)
    image_weight: float = Field(default=0.5, ge=0)
    batch_size: int = Field(default=128, gt=0)
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    query_model: str = ""

    @model_validator(mode="after")
    def _some_weight(self) -> EncoderConfig:
        if self.text_weight + self.image_weight <= 0:
            raise ConfigError("encoder.text_weight: text_weight + image_weight must be > 0")
        return self


class PretrainConfig(Section):
    """Contrastive (CLIP-style) training of the vision tower against the frozen text tower:
    ``steps`` optimizer steps from ``seed``, so the same settings give the same encoder on
    any machine; ``time_budget_s`` > 0 stops earlier when the time runs out (the result then
    depends on the machine). ``val_fraction`` of the items are held out for validation.
    ``threads``: torch threads (0 keeps torch's default)."""

    steps: int = Field(default=120, ge=1)
    time_budget_s: float = Field(default=0.0, ge=0, description="0 = no time cap")
    batch_size: int = Field(default=128, ge=2)
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = 0.05
    val_fraction: float = Field(default=0.15, gt=0, lt=1)
    seed: int = 0
    threads: int = Field(default=0, ge=0, description="0 = torch default")


class PopulationConfig(Section):
    """The simulated device populations (``simulation.population``).

    Retail: a device per customer with >= ``min_items`` distinct items (files "":
    ``transactions.csv.gz`` under ``paths.retail`` and the ``products.csv`` next to it, or,
    without one, a product table derived from the transactions). Marketplace:
    ``shoppers`` with ``train_searches`` + ``test_searches`` searches each, who click
    position p with weight ``(p+1)**-position_bias * exp(utility / click_temperature)``.
    A search shows ``impression_size`` items; the last ``holdout_fraction`` is for testing.
    """

    retail_transactions: str = ""
    retail_products: str = ""
    min_items: int = Field(default=5, ge=2)
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    impression_size: int = Field(default=20, ge=1)
    shoppers: int = Field(default=1000, ge=1)
    train_searches: int = Field(default=30, ge=1)
    test_searches: int = Field(default=5, ge=1)
    position_bias: float = Field(default=1.0, ge=0)
    click_temperature: float = Field(default=0.5, gt=0)


class SearchConfig(Section):
    """The search service (``fedsearch serve``): its index and its limits on requests.

    Up to ``exact_max_items`` items the index is exact; beyond, an IVF index (``ivf_nlist``
    lists, 0: 4 * sqrt(n)) whose ``ivf_nprobe`` the build raises until recall@10 against exact
    search reaches ``ann_min_recall`` on ``recall_queries`` sample queries, with 95% confidence
    (the lower bound of their mean recall: a small or lucky sample cannot pass). Its kind
    ("auto" for ``fedsearch index --kind``) is the most exact whose vectors fit
    ``index_memory_mb``: IVF with float32, float16 or 8-bit scalar codes, else IVF-PQ with
    ``pq_bytes`` bytes per vector (0: one per four dimensions) whose top ``refine_factor * k``
    candidates are re-scored on the full vectors. ``store_dir`` "": ``<work_dir>/search``.
    ``public_key`` "": registry versions are checked against their manifest's sha256,
    without a signature.
    ``query_precision``: the query text tower's ("auto": the fastest precision of its runtime
    whose vectors agree with float32's, measured at start-up); items are always in float32.
    ``query_runtime``: "torch", "numpy" (float32) or "onnx" (float32, int8); the last two
    encode a student (``encoder.query_model``; ``fedsearch distill --steps 0`` copies the
    teacher's) without torch, loaded when a photo or an item upsert first needs the base
    encoder. ``query_cache_size``: query texts kept (LRU; 0: none). ``torch_threads``: the
    query encoder's (torch's, BLAS's, ONNX Runtime's). Threads 0: the library default.

    Security (``server.search.auth``, ``serve_checks``): ``admin_token`` guards catalog
    writes and ``/admin/*`` ("": ``$FEDSEARCH_ADMIN_TOKEN``, else the token file the first
    ``fedsearch serve`` creates); a host other than loopback needs a token and
    ``public_key`` unless ``--insecure``. ``tls_certfile`` + ``tls_keyfile`` (PEM, both or
    neither) serve HTTPS. ``demo`` serves ``/shoppers``.

    Bounds (``server.search.limits``, ``images``, ``http_server``): request bodies of
    ``max_request_bytes`` (``POST /search`` and ``/items``; 64 KiB elsewhere) counted as
    they arrive and due within ``body_timeout_s``; headers due within ``header_timeout_s``;
    JSON nested at most ``max_json_depth``; photos of ``max_image_bytes`` and
    ``max_image_pixels`` (read from the header before decoding).
    """

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    store_dir: str = ""
    candidates: int = Field(default=200, ge=1)
    default_k: int = Field(default=10, ge=1)
    max_k: int = 200
    exact_max_items: int = Field(default=20000, ge=0)
    ivf_nlist: int = Field(default=0, ge=0, description="0 = 4 * sqrt(n)")
    ivf_nprobe: int = Field(default=8, ge=1)
    ann_min_recall: float = Field(default=0.95, gt=0, le=1)
    recall_queries: int = Field(default=2000, ge=10)
    max_text_chars: int = Field(default=512, ge=1)
    max_image_bytes: int = Field(default=4_000_000, ge=1)
    max_request_bytes: int = 16_000_000
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    max_json_depth: int = Field(default=32, ge=2)
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=60.0, gt=0)
    max_upsert_items: int = Field(default=256, ge=1)
    personalization_weight: float = Field(default=0.3, ge=0)
    synthetic_prices: bool = True
    poll_interval_s: float = Field(default=5.0, gt=0)
    public_key: str = ""
    admin_token: str = ""
    tls_certfile: str = ""
    tls_keyfile: str = ""
    demo: bool = False
    shoppers_file: str = ""
    max_batch: int = Field(default=32, ge=1)
    query_precision: TextPrecision = "auto"
    query_runtime: QueryRuntime = "torch"
    query_cache_size: int = Field(default=10000, ge=0, description="0 = no cache")
    index_memory_mb: float = Field(default=256.0, gt=0)
    pq_bytes: int = Field(default=0, ge=0, description="0 = a byte per 4 dimensions")
    refine_factor: int = Field(default=10, ge=1)
    torch_threads: int = Field(default=1, ge=0, description="0 = default")
    faiss_threads: int = Field(default=1, ge=0, description="0 = default")

    @model_validator(mode="after")
    def _consistent_limits(self) -> SearchConfig:
        if self.max_k < self.default_k:
            raise ConfigError("search.max_k: must be >= search.default_k")
        if self.max_request_bytes < self.max_image_bytes:
            raise ConfigError("search.max_request_bytes: must be >= search.max_image_bytes")
        allowed = RUNTIME_PRECISIONS[self.query_runtime]
        if self.query_precision not in ("auto", *allowed):
            raise ConfigError(
                f"search.query_precision: the {self.query_runtime} query runtime computes in "
                f'{" or ".join(allowed)} (or "auto"), not {self.query_precision!r}'
            )
        return self


class SpeechConfig(Section):
    """Spoken queries: the ``audio`` part of ``POST /search``, ``fedsearch search --audio``.

    ``engine``: "pocketsphinx" (offline, the English model shipped in its wheel, decoding
    with a language model built from the served catalog's titles and attributes, rebuilt on
    every upsert and delete), "whisper" (a Whisper-family model in the local folder
    ``whisper_dir``, loaded through transformers, never downloaded; on ``whisper_device``,
    "auto": the GPU when there is one) or "off" (audio is refused). ``language_model``
    "general": pocketsphinx's own English model instead of the catalog's. Audio is WAV, 16-bit
    PCM, mono or stereo at ``min_rate``..``max_rate`` Hz, at most ``max_seconds`` long and
    ``max_bytes`` big (a WAV part larger than that is refused before it is read whole).
    """

    engine: Literal["pocketsphinx", "whisper", "off"] = "pocketsphinx"
    language_model: Literal["catalog", "general"] = "catalog"
    whisper_dir: str = ""
    whisper_device: Literal["cpu", "cuda", "auto"] = "cpu"
    max_seconds: float = Field(default=15.0, gt=0, le=120)
    max_bytes: int = Field(default=6_000_000, ge=1)
    min_rate: int = Field(default=8000, ge=1000)
    max_rate: int = Field(default=96000, le=384000)

    @model_validator(mode="after")
    def _consistent(self) -> SpeechConfig:
        if self.engine == "whisper" and not self.whisper_dir:
            raise ConfigError("speech.whisper_dir: required when speech.engine is whisper")
        if self.min_rate > self.max_rate:
            raise ConfigError("speech.min_rate: must be <= speech.max_rate")
        return self


class Config(Section):
    """The whole configuration, one field per TOML table."""

    paths: PathsConfig = PathsConfig()
    encoder: EncoderConfig = EncoderConfig()
    pretrain: PretrainConfig = PretrainConfig()
    population: PopulationConfig = PopulationConfig()
    adapter: AdapterConfig = AdapterConfig()
    centralized: CentralizedConfig = CentralizedConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    search: SearchConfig = SearchConfig()
    speech: SpeechConfig = SpeechConfig()
    federation: FederationConfig = FederationConfig()
    device: DeviceConfig = DeviceConfig()


_TYPE_NAMES = {"int_type": "int", "float_type": "float", "string_type": "str", "bool_type": "bool"}


def _model_at(loc: tuple[str, ...]) -> type[BaseModel]:
    model: Any = Config
    for part in loc:
        model = model.model_fields[part].annotation
    return cast("type[BaseModel]", model)


def _bounds(info: FieldInfo) -> str:
    """``must be > 0``, ``must be in [0, 1)``...: the field's constraints, with its note."""
    b = {k: getattr(m, k) for m in info.metadata for k in ("gt", "ge", "lt", "le") if hasattr(m, k)}
    low = f"({b['gt']}" if "gt" in b else f"[{b['ge']}" if "ge" in b else ""
    high = f"{b['lt']})" if "lt" in b else f"{b['le']}]" if "le" in b else ""
    op = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    one_sided = " and ".join(f"must be {op[k]} {v}" for k, v in b.items())
    text = f"must be in {low}, {high}" if low and high else one_sided
    return f"{text} ({info.description})" if info.description else text


def _config_error(exc: ValidationError) -> ConfigError:
    """The first error of ``exc`` as one line: ``section.key: what is wrong``."""
    err = exc.errors(include_url=False)[0]
    loc = tuple(str(part) for part in err["loc"])
    kind, ctx, value = err["type"], err.get("ctx", {}), err["input"]
    error = ctx.get("error")
    if isinstance(error, ConfigError):  # a model validator's cross-field rule
        return error
    if kind == "extra_forbidden":
        message = f"unknown key (known: {', '.join(sorted(_model_at(loc[:-1]).model_fields))})"
    elif ctx.keys() & {"gt", "ge", "lt", "le"}:
        message = f"{_bounds(_model_at(loc[:-1]).model_fields[loc[-1]])}, got {value!r}"
    elif kind == "literal_error":
        message = f"must be {ctx['expected']}, got {value!r}"
    elif kind in _TYPE_NAMES or kind == "model_type":
        expected = _TYPE_NAMES.get(kind, "a table")
        message = f"expected {expected}, got {type(value).__name__} {value!r}"
    else:
        message = err["msg"]
    return ConfigError(f"{'.'.join(loc)}: {message}")


def config_from_dict(data: dict[str, Any], base: Config | None = None) -> Config:
    """A ``Config`` from nested dicts deep-merged over ``base`` (None: the defaults)."""
    merged = _merge((base or Config()).model_dump(), data)
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        raise _config_error(exc) from None


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if nested else value
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load a TOML config file (None: defaults only) and apply ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    config = config_from_dict(data)
    return config_from_dict(overrides, config) if overrides else config


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``section.key=value`` (value in TOML syntax, bare words as strings) into a dict."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    dotted, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    *parents, last = dotted.strip().split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return out
