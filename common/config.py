"""Typed configuration, loaded from TOML with every key checked.

Each section is a frozen dataclass; ``load_config`` reads a TOML file (or a dict) and
rejects unknown keys and wrongly typed values with a ``ConfigError`` naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
TEXT_PRECISIONS = ("auto", "float32", "bfloat16")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the key."""


def default_data_dir() -> Path:
    """``$FEDSEARCH_DATA_DIR``, else the ``shared/data`` folder beside the checkout."""
    env = os.environ.get("FEDSEARCH_DATA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class PathsConfig:
    data_dir: str = ""
    work_dir: str = "runs"

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
        return self.work / "encoder"

    @property
    def registry(self) -> Path:
        return self.work / "registry"


@dataclass(frozen=True)
class EncoderConfig:
    """Which base encoder to build; see ``common.model.encoder.create_encoder``.

    ``model`` is a built-in config name (``fedsearch-*``), any open_clip model name, a
    ``local-dir:`` folder or a checkpoint file. ``pretrained`` is an open_clip pretrained
    tag or weights file; for built-in configs ``"latest"`` loads the newest checkpoint
    written by ``fedsearch pretrain`` under ``<work_dir>/encoder``.
    """

    model: str = "fedsearch-minilm-rn64"
    pretrained: str = "latest"
    text_weight: float = 0.5
    image_weight: float = 0.5
    batch_size: int = 128
    device: str = "cpu"

    def validate(self) -> None:
        _check(self.text_weight >= 0, "encoder.text_weight", "must be >= 0")
        _check(self.image_weight >= 0, "encoder.image_weight", "must be >= 0")
        _check(
            self.text_weight + self.image_weight > 0,
            "encoder.text_weight",
            "text_weight + image_weight must be > 0",
        )
        _check(self.batch_size > 0, "encoder.batch_size", "must be > 0")
        _check(self.device in ("cpu", "cuda", "auto"), "encoder.device", "cpu, cuda or auto")


@dataclass(frozen=True)
class PretrainConfig:
    """CLIP-style training of the vision tower with the text tower locked."""

    time_budget_s: float = 150.0
    max_epochs: int = 60
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    val_fraction: float = 0.15
    seed: int = 0
    threads: int = 0

    def validate(self) -> None:
        _check(self.time_budget_s > 0, "pretrain.time_budget_s", "must be > 0")
        _check(self.max_epochs > 0, "pretrain.max_epochs", "must be > 0")
        _check(self.batch_size >= 2, "pretrain.batch_size", "must be >= 2")
        _check(self.lr > 0, "pretrain.lr", "must be > 0")
        _check(0 < self.val_fraction < 1, "pretrain.val_fraction", "must be in (0, 1)")
        _check(self.threads >= 0, "pretrain.threads", "must be >= 0 (0 = torch default)")


@dataclass(frozen=True)
class PopulationConfig:
    """Simulated device populations (``simulation.population``).

    Retail files: empty means ``<paths.retail>/transactions.csv.gz`` and ``products.csv``.
    ``impression_size`` = items shown per search; ``shoppers``, ``*_searches``,
    ``position_bias`` and ``click_temperature`` shape the marketplace's simulated shoppers.
    """

    retail_transactions: str = ""
    retail_products: str = ""
    min_items: int = 5
    holdout_fraction: float = 0.2
    impression_size: int = 20
    shoppers: int = 200
    train_searches: int = 30
    test_searches: int = 5
    position_bias: float = 1.0
    click_temperature: float = 0.5

    def validate(self) -> None:
        _check(self.min_items >= 2, "population.min_items", "must be >= 2")
        _check(0 < self.holdout_fraction < 1, "population.holdout_fraction", "must be in (0, 1)")
        _check(self.impression_size >= 1, "population.impression_size", "must be >= 1")
        _check(self.shoppers >= 1, "population.shoppers", "must be >= 1")
        _check(self.train_searches >= 1, "population.train_searches", "must be >= 1")
        _check(self.test_searches >= 1, "population.test_searches", "must be >= 1")
        _check(self.position_bias >= 0, "population.position_bias", "must be >= 0")
        _check(self.click_temperature > 0, "population.click_temperature", "must be > 0")


@dataclass(frozen=True)
class AdapterConfig:
    """The shared query adapter and its per-sample ranking loss (``common.model.ranking_loss``).

    Centralized and federated training both use these: negatives are ``shown_negatives``
    shown-but-not-clicked items of the same impression plus ``random_negatives`` catalog items.
    """

    rank: int = 64
    temperature: float = 0.05
    shown_negatives: int = 20
    random_negatives: int = 32

    def validate(self) -> None:
        _check(self.rank >= 1, "adapter.rank", "must be >= 1")
        _check(self.temperature > 0, "adapter.temperature", "must be > 0")
        _check(self.shown_negatives >= 0, "adapter.shown_negatives", "must be >= 0")
        _check(self.random_negatives >= 0, "adapter.random_negatives", "must be >= 0")
        _check(
            self.shown_negatives + self.random_negatives > 0,
            "adapter.random_negatives",
            "shown_negatives + random_negatives must be > 0",
        )


@dataclass(frozen=True)
class CentralizedConfig:
    """The non-private centralized adapter training (the upper reference baseline).

    Up to ``epochs`` epochs; with ``patience`` > 0, each device's last train search is held
    out for validation (never trained on), training stops after ``patience`` epochs without
    a better validation nDCG, and the best epoch's adapter is kept (0: train all epochs on
    all searches). ``threads``: torch threads while training (1 is ~7x faster than 2 for
    these small tensors on a shared 2-core machine; 0 keeps torch's default).
    """

    epochs: int = 30
    patience: int = 3
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    threads: int = 1

    def validate(self) -> None:
        _check(self.epochs >= 1, "centralized.epochs", "must be >= 1")
        _check(self.patience >= 0, "centralized.patience", "must be >= 0")
        _check(self.threads >= 0, "centralized.threads", "must be >= 0 (0 = torch default)")
        _check(self.batch_size >= 1, "centralized.batch_size", "must be >= 1")
        _check(self.lr > 0, "centralized.lr", "must be > 0")
        _check(self.weight_decay >= 0, "centralized.weight_decay", "must be >= 0")


@dataclass(frozen=True)
class EvaluationConfig:
    """Held-out evaluation: metrics at ``k`` over the full catalog; personal reranking
    re-scores the top ``candidates`` with ``beta * cos(user, item)``."""

    k: int = 10
    candidates: int = 100
    beta: float = 0.3

    def validate(self) -> None:
        _check(self.k >= 1, "evaluation.k", "must be >= 1")
        _check(self.candidates >= self.k, "evaluation.candidates", "must be >= evaluation.k")
        _check(self.beta >= 0, "evaluation.beta", "must be >= 0")


@dataclass(frozen=True)
class SearchConfig:
    """The search service (``fedsearch serve``), its index and its input limits.

    Below ``exact_max_items`` items the index is exact inner product; above, IVF with
    ``ivf_nprobe`` raised at build time until recall@10 vs exact reaches ``ann_min_recall``
    on the build's sample queries (0.96: a margin, so new queries keep 0.95).
    ``store_dir`` "" means ``<work_dir>/search``; ``public_key`` "" means registry versions
    are checked against their manifest's sha256 only (no signature). ``query_precision``:
    the text tower's precision for query texts, "float32", "bfloat16" or "auto" (bfloat16
    where the hardware computes it natively); items are always encoded in float32.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    store_dir: str = ""
    candidates: int = 200
    default_k: int = 10
    max_k: int = 200
    exact_max_items: int = 20000
    ivf_nlist: int = 0
    ivf_nprobe: int = 8
    ann_min_recall: float = 0.96
    recall_queries: int = 500
    max_text_chars: int = 512
    max_image_bytes: int = 4_000_000
    max_request_bytes: int = 16_000_000
    max_upsert_items: int = 256
    personalization_weight: float = 0.3
    synthetic_prices: bool = True
    poll_interval_s: float = 5.0
    public_key: str = ""
    admin_token: str = ""
    shoppers_file: str = ""
    max_batch: int = 32
    query_precision: str = "auto"
    torch_threads: int = 1
    faiss_threads: int = 1
    journal_max_ops: int = 1000

    def validate(self) -> None:
        _check(0 < self.port < 65536, "search.port", "must be in 1..65535")
        _check(self.default_k >= 1, "search.default_k", "must be >= 1")
        _check(self.max_k >= self.default_k, "search.max_k", "must be >= search.default_k")
        _check(self.candidates >= 1, "search.candidates", "must be >= 1")
        _check(self.exact_max_items >= 0, "search.exact_max_items", "must be >= 0")
        _check(self.ivf_nlist >= 0, "search.ivf_nlist", "must be >= 0 (0 = 4 * sqrt(n))")
        _check(self.ivf_nprobe >= 1, "search.ivf_nprobe", "must be >= 1")
        _check(0 < self.ann_min_recall <= 1, "search.ann_min_recall", "must be in (0, 1]")
        _check(self.recall_queries >= 10, "search.recall_queries", "must be >= 10")
        _check(self.max_text_chars >= 1, "search.max_text_chars", "must be >= 1")
        _check(self.max_image_bytes >= 1, "search.max_image_bytes", "must be >= 1")
        _check(
            self.max_request_bytes >= self.max_image_bytes,
            "search.max_request_bytes",
            "must be >= search.max_image_bytes",
        )
        _check(self.max_upsert_items >= 1, "search.max_upsert_items", "must be >= 1")
        _check(self.personalization_weight >= 0, "search.personalization_weight", "must be >= 0")
        _check(self.poll_interval_s > 0, "search.poll_interval_s", "must be > 0")
        _check(self.max_batch >= 1, "search.max_batch", "must be >= 1")
        _check(
            self.query_precision in TEXT_PRECISIONS,
            "search.query_precision",
            " or ".join(TEXT_PRECISIONS),
        )
        _check(self.torch_threads >= 0, "search.torch_threads", "must be >= 0 (0 = default)")
        _check(self.faiss_threads >= 0, "search.faiss_threads", "must be >= 0 (0 = default)")
        _check(self.journal_max_ops >= 1, "search.journal_max_ops", "must be >= 1")


@dataclass(frozen=True)
class FederationConfig:
    """Federated training of the shared query adapter (DESIGN decisions 4-6).

    Each round every device joins with probability ``clients_per_round / population``
    (Poisson sampling). User-level DP (``dp``): each device clips its update to
    ``clipping_norm``, the server adds Gaussian noise ``noise_multiplier * clipping_norm``
    to the sum, and the run refuses to start if ``rounds`` would spend more than
    ``epsilon_user`` at ``delta_user`` (0 means 1 / population). ``secagg``: SecAgg+ where
    each device shares its keys with ``secagg_neighbours`` others of its round (all of them
    in smaller rounds) and ``secagg_threshold`` of those shares are needed to unmask; updates
    are quantized over [-secagg_range, secagg_range]. ``eval_devices`` devices are evaluated
    each round (0 = all); the last round evaluates every device. ``average_decay``: devices
    evaluate, and the registry publishes, a moving average of the global adapter with this
    decay per round (0: the latest aggregate); training continues from the aggregate.
    """

    rounds: int = 20
    clients_per_round: int = 20
    eval_devices: int = 50
    seed: int = 0
    dp: bool = True
    noise_multiplier: float = 0.7
    clipping_norm: float = 0.1
    epsilon_user: float = 8.0
    delta_user: float = 0.0
    secagg: bool = True
    secagg_neighbours: int = 10
    secagg_threshold: float = 0.6
    secagg_range: float = 4.0
    client_cpus: float = 1.0
    publish: bool = True
    average_decay: float = 0.8

    def validate(self) -> None:
        _check(self.rounds >= 1, "federation.rounds", "must be >= 1")
        _check(self.clients_per_round >= 1, "federation.clients_per_round", "must be >= 1")
        _check(self.eval_devices >= 0, "federation.eval_devices", "must be >= 0 (0 = all)")
        _check(self.noise_multiplier >= 0, "federation.noise_multiplier", "must be >= 0")
        _check(self.clipping_norm > 0, "federation.clipping_norm", "must be > 0")
        _check(self.epsilon_user > 0, "federation.epsilon_user", "must be > 0")
        _check(0 <= self.delta_user < 1, "federation.delta_user", "must be in [0, 1)")
        _check(self.secagg_neighbours >= 2, "federation.secagg_neighbours", "must be >= 2")
        _check(0 < self.secagg_threshold <= 1, "federation.secagg_threshold", "must be in (0, 1]")
        _check(self.secagg_range > 0, "federation.secagg_range", "must be > 0")
        _check(self.client_cpus > 0, "federation.client_cpus", "must be > 0")
        _check(0 <= self.average_decay < 1, "federation.average_decay", "must be in [0, 1)")


@dataclass(frozen=True)
class DeviceConfig:
    """Local training on a device: Opacus DP-SGD on its copy of the global adapter.

    Poisson batches of expected size ``batch_size``, ``optimizer`` "adam" or "sgd" (with
    ``momentum``), a fresh optimizer each round; record-level DP (``dp``) clips each
    search's gradient to ``max_grad_norm`` and adds noise ``noise_multiplier`` times that.
    The accountant persists on the device: a device that would pass ``epsilon_budget`` at
    ``delta`` declines to train.
    """

    local_epochs: int = 5
    batch_size: int = 16
    optimizer: str = "adam"
    lr: float = 0.003
    momentum: float = 0.0
    dp: bool = True
    noise_multiplier: float = 0.6
    max_grad_norm: float = 1.0
    epsilon_budget: float = 30.0
    delta: float = 1e-4

    def validate(self) -> None:
        _check(self.local_epochs >= 1, "device.local_epochs", "must be >= 1")
        _check(self.batch_size >= 1, "device.batch_size", "must be >= 1")
        _check(self.optimizer in ("adam", "sgd"), "device.optimizer", "adam or sgd")
        _check(self.lr > 0, "device.lr", "must be > 0")
        _check(0 <= self.momentum < 1, "device.momentum", "must be in [0, 1)")
        _check(self.noise_multiplier >= 0, "device.noise_multiplier", "must be >= 0")
        _check(self.max_grad_norm > 0, "device.max_grad_norm", "must be > 0")
        _check(self.epsilon_budget > 0, "device.epsilon_budget", "must be > 0")
        _check(0 < self.delta < 1, "device.delta", "must be in (0, 1)")


@dataclass(frozen=True)
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    population: PopulationConfig = field(default_factory=PopulationConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    centralized: CentralizedConfig = field(default_factory=CentralizedConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate()


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field annotation (scalars, lists, optionals, sections)."""
    hint = typing.get_origin(annotation)
    if hint in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not a valid {annotation}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {type(value).__name__}")
        return _build(annotation, value, key)
    if hint is list or hint is tuple:
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        items = [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if hint is tuple else items
    if annotation is Any:
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got bool")
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise ConfigError(
            f"{key}: expected {annotation.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {
        name: _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name)
        for name, value in data.items()
    }
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any], base: Config | None = None) -> Config:
    """Build a ``Config`` from nested dicts, over ``base`` (defaults if None), and validate."""
    merged = _merge(dataclasses.asdict(base or Config()), data)
    config = _build(Config, merged, "")
    config.validate()
    return config


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
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
