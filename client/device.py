"""A device's folder: what one shopper's device holds on disk to join the federation.

::

    <device>/
      device.json        name, SuperLink address, search endpoint, Runtime API port
      device.toml        optional: the device's own settings and privacy policy ([device])
      ca.crt             the federation's CA certificate (verifies the SuperLink's TLS)
      signing.pub        the server's Ed25519 key (verifies published model versions)
      auth.key auth.pub  SuperNode authentication key pair, made here; only auth.pub leaves
      store.key          the store key (0600), unless $FEDSEARCH_DEVICE_KEY is set
      store/             the encrypted search log and personal state
      runtime/           device-local TLS for the SuperNode's loopback Runtime API
      public_items.npz   public catalog item vectors (random negatives for training)
      registry/          the device's copy of the published, signed model versions
      flwr/              FLWR_HOME of the SuperNode (the installed app, FAB by FAB)

``supernode_command`` is the exact ``flower-supernode`` command that joins the federation
as this device (``--isolation process``); ``superexec_command`` runs the SuperExec that
starts its ClientApp processes (``client.superexec``: only apps signed with the key in
``signing.pub``, ``client.app_guard``; it reaps them). The ClientApp finds
the folder in its node config under ``device-dir``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import numpy as np
import tomli_w

from client.store import (
    KEY_ENV,
    DeviceStore,
    LoggedSearch,
    PersonalState,
    load_key,
    write_key_file,
)
from common.config import DeviceConfig, config_from_dict, load_config
from common.data.retail import split_history
from common.data.searches import DeviceData, SearchExample
from common.federation.flower_env import flower_env
from common.files import atomic_write
from common.security.pki import create_local_tls, create_node_auth_keys

DEVICE_FILE = "device.json"
BASE_MODEL_INFO = "base_model"  # personal state info: the encoder of the device's vectors
DEVICE_CONFIG_FILE = "device.toml"
NODE_CONFIG_KEY = "device-dir"
DEFAULT_RUNTIME_PORT = 9094
PUBLIC_ITEMS = "public_items.npz"


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    superlink: str
    endpoint: str = ""
    runtime_port: int = DEFAULT_RUNTIME_PORT


class Device:
    """Paths and settings of one device folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).resolve()

    @property
    def info(self) -> DeviceInfo:
        path = self.folder / DEVICE_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.folder} is not a device folder (no {DEVICE_FILE}); "
                "create it with `fedsearch device init`"
            )
        return DeviceInfo(**json.loads(path.read_text(encoding="utf-8")))

    ca_cert = property(lambda self: self.folder / "ca.crt")
    signing_pub = property(lambda self: self.folder / "signing.pub")
    auth_key = property(lambda self: self.folder / "auth.key")
    auth_pub = property(lambda self: self.folder / "auth.pub")
    store_key = property(lambda self: self.folder / "store.key")
    store_dir = property(lambda self: self.folder / "store")
    runtime_dir = property(lambda self: self.folder / "runtime")
    public_items = property(lambda self: self.folder / PUBLIC_ITEMS)
    registry_dir = property(lambda self: self.folder / "registry")
    config_file = property(lambda self: self.folder / DEVICE_CONFIG_FILE)

    def device_config(self) -> DeviceConfig:
        """The device's own settings and privacy policy (``device.toml``'s ``[device]``
        table; defaults where absent). Never taken from the server."""
        if not self.config_file.is_file():
            return DeviceConfig()
        return load_config(self.config_file).device

    def base_model(self) -> str | None:
        """The encoder the device's logged vectors come from (recorded at import), if known."""
        return self.open_store().load_state().info.get(BASE_MODEL_INFO)

    def open_store(self) -> DeviceStore:
        key_file = None if os.environ.get(KEY_ENV) else self.store_key
        return DeviceStore.open(self.store_dir, key_file)


def init_device(
    folder: Path,
    info: DeviceInfo,
    *,
    ca_cert: Path,
    signing_pub: Path,
    policy: Mapping[str, float | bool] | None = None,
) -> Device:
    """Create a device folder: keys made here, CA and signing key copied in, empty store,
    and ``policy`` (``device.*`` settings, checked before anything is written) in
    ``device.toml``."""
    device = Device(folder)
    settings = config_from_dict({"device": dict(policy or {})}).device  # names a bad key
    if (device.folder / DEVICE_FILE).exists():
        raise FileExistsError(f"{device.folder} is already a device folder")
    for path, what in ((ca_cert, "CA certificate"), (signing_pub, "signing public key")):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{what} not found: {path}")
    device.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copyfile(ca_cert, device.ca_cert)
    shutil.copyfile(signing_pub, device.signing_pub)
    create_node_auth_keys(device.auth_key, device.auth_pub)
    device.runtime_dir.mkdir(mode=0o700, exist_ok=True)
    create_local_tls(device.runtime_dir)
    key = load_key(None) if os.environ.get(KEY_ENV) else write_key_file(device.store_key)
    DeviceStore(device.store_dir, key).save_state(PersonalState())
    (device.folder / DEVICE_FILE).write_text(json.dumps(asdict(info), indent=2), "utf-8")
    if policy:
        table = {key: getattr(settings, key) for key in policy}
        device.config_file.write_text(tomli_w.dumps({"device": table}), "utf-8")
    return device


def device_env(device: Device) -> dict[str, str]:
    """Environment of the device's SuperNode: Flower's files stay in the device folder."""
    return flower_env(FLWR_HOME=str(device.folder / "flwr"))


def supernode_command(device: Device, *, superlink: str | None = None) -> list[str]:
    """The ``flower-supernode`` command that runs this device (TLS and node auth on)."""
    info = device.info
    runtime = device.runtime_dir
    if any(c in str(device.folder) + info.name for c in '"\\'):
        raise ValueError("device folder and name must not contain quotes or backslashes")
    node_config = f'{NODE_CONFIG_KEY}="{device.folder}" device-name="{info.name}"'
    return [
        "flower-supernode",
        "--superlink",
        superlink or info.superlink,
        "--root-certificates",
        str(device.ca_cert),
        "--auth-supernode-private-key",
        str(device.auth_key),
        "--host",
        "127.0.0.1",
        "--port",
        str(info.runtime_port),
        "--ssl-ca-certfile",
        str(runtime / "runtime-ca.crt"),
        "--ssl-certfile",
        str(runtime / "runtime.crt"),
        "--ssl-keyfile",
        str(runtime / "runtime.key"),
        "--node-config",
        node_config,
        "--isolation",
        "process",
    ]


def superexec_command(device: Device) -> list[str]:
    """The SuperExec beside this device's SuperNode (see the module doc)."""
    return [
        sys.executable,
        "-m",
        "client.superexec",
        "--runtime-api-address",
        f"127.0.0.1:{device.info.runtime_port}",
        "--root-certificates",
        str(device.runtime_dir / "runtime-ca.crt"),
        "--trusted-app-key",
        str(device.signing_pub),
    ]


def save_public_items(device: Device, ids: list[str], vectors: np.ndarray) -> None:
    """Store public catalog item vectors on the device (no private data)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids but {len(vectors)} vectors")
    buffer = io.BytesIO()
    np.savez(buffer, ids=np.asarray(ids, dtype=str), vectors=vectors)
    atomic_write(device.public_items, buffer.getvalue())


def load_public_items(device: Device) -> tuple[list[str], np.ndarray | None]:
    if not device.public_items.is_file():
        return [], None
    with np.load(device.public_items, allow_pickle=False) as data:
        return [str(i) for i in data["ids"]], data["vectors"].astype(np.float32)


def training_data(
    device: Device, holdout_fraction: float
) -> tuple[DeviceData, list[str], np.ndarray]:
    """The device's clicked searches as training/evaluation data, and its item table.

    Items are the public catalog items first, then any shown item missing from them (with
    the vector the search service returned). The last ``holdout_fraction`` of the clicked
    searches is held out for evaluation, as ``common.data.retail.split_history`` splits.
    """
    log = [e for e in device.open_store().searches() if e.clicked is not None]
    ids, public = load_public_items(device)
    index = {item: i for i, item in enumerate(ids)}
    extra: list[np.ndarray] = []
    for entry in log:
        for item, vector in zip(entry.shown, entry.shown_vectors, strict=True):
            if item not in index:
                index[item] = len(ids)
                ids.append(item)
                extra.append(vector)
    dim = public.shape[1] if public is not None else len(log[0].query_vector) if log else 0
    parts = [p for p in (public, np.asarray(extra, np.float32).reshape(-1, dim)) if p is not None]
    vectors = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
    searches = [
        SearchExample(
            e.query_vector,
            np.array([index[i] for i in e.shown], dtype=np.int64),
            index[cast(str, e.clicked)],  # log holds clicked searches only
            e.query,
        )
        for e in sorted(log, key=lambda e: e.timestamp)
    ]
    train, test = split_history(searches, holdout_fraction) if len(searches) > 1 else (searches, [])
    return DeviceData(device.info.name, train, test), ids, vectors


def import_searches(
    device: Device,
    data: DeviceData,
    item_ids: list[str],
    item_vectors: np.ndarray,
) -> int:
    """Write a history (e.g. one simulated or real customer's) into the device's store."""
    start = time.time() - len(data.train) - len(data.test)
    entries = [
        LoggedSearch(
            search_id=uuid.uuid4().hex,
            query=s.query,
            query_vector=np.asarray(s.query_vector, dtype=np.float32),
            shown=tuple(item_ids[i] for i in s.shown),
            shown_vectors=np.asarray(item_vectors[s.shown], dtype=np.float32),
            clicked=item_ids[s.clicked],
            timestamp=start + n,
            model_version="imported",
        )
        for n, s in enumerate([*data.train, *data.test])
    ]
    device.open_store().add_searches(entries)
    return len(entries)
