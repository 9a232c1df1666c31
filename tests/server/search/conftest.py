"""Fixtures for the search service tests: 50 real fashion items, encoded once per session."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from common.config import Config, SearchConfig, config_from_dict
from server.search.bench_limits import post_chunked as stream_chunked  # noqa: F401

SEARCH_ITEMS = 50
ADMIN_TOKEN = "test-admin-token"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="session")
def search_items(fashion_dir):
    from server.search.catalog_build import fashion_items

    config = config_from_dict({"paths": {"data_dir": str(fashion_dir.parent)}})
    return fashion_items(config, limit=SEARCH_ITEMS)


@pytest.fixture(scope="session")
def search_vectors(search_items, untrained_encoder) -> np.ndarray:

    return untrained_encoder.encode_items(
        [it.title for it in search_items],
        [it.photo for it in search_items],
        text_weight=0.5,
        image_weight=0.5,
    )


def search_config(work: Path, **search: object) -> Config:
    return config_from_dict(
        {
            "paths": {"work_dir": str(work)},
            "encoder": {"pretrained": "none"},
            "search": {"poll_interval_s": 0.05, **search},
        }
    )


@pytest.fixture
def make_app(tmp_path, search_items, search_vectors, untrained_encoder):
    """``make_app(**search_overrides)`` -> (app, config), over a fresh 50-item store; the
    admin token is ``ADMIN_TOKEN`` unless overridden."""
    from server.search.catalog_build import create_catalog, open_catalog
    from server.search.service import create_app

    def make(reopen: bool = False, watch_registry: bool = False, **search: object):
        config = search_config(tmp_path / "work", **{"admin_token": ADMIN_TOKEN, **search})
        if reopen:
            catalog = open_catalog(config)
        else:
            catalog = create_catalog(
                config, search_items, search_vectors, untrained_encoder.version
            )
        app = create_app(
            config, encoder=untrained_encoder, catalog=catalog, watch_registry=watch_registry
        )
        return app, config

    return make


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(app, search: SearchConfig | None = None) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 in a thread; yield its URL; stop it. With
    ``search``, with the service's own settings (``server.search.http_server``)."""
    import uvicorn

    from server.search.http_server import server_config

    port = free_port()
    if search is not None:
        settings = server_config(app, "127.0.0.1", port, search)
    else:
        settings = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", ws="none"
        )
    server = uvicorn.Server(settings)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def serve_app():
    """``with serve_app(app) as url:`` runs the app on a free port of 127.0.0.1."""
    return running_server
