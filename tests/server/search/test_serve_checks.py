"""Secure by default: a fresh `fedsearch serve` guards writes with a token it prints once;
exposing the service beyond loopback needs a token and a signing key; TLS works."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from common.cli import main
from common.config import config_from_dict
from common.security.pki import create_ca, issue_server_cert
from server.search.auth import ADMIN_TOKEN_ENV, TOKEN_FILE, AdminAuth
from server.search.serve_checks import admin_for_serving, is_loopback
from tests.server.search.conftest import free_port

ROOT = Path(__file__).resolve().parents[3]
ITEM = {"items": [{"id": "new-1", "title": "Hand Made Clay Mug"}]}


@pytest.fixture
def store(tmp_path, search_items, search_vectors, untrained_encoder) -> Path:
    """A work folder with a served store of the 50 test items (no token yet)."""
    from server.search.catalog_build import create_catalog

    work = tmp_path / "work"
    config = config_from_dict({"paths": {"work_dir": str(work)}})
    create_catalog(config, search_items, search_vectors, untrained_encoder.version).close()
    return work


def settings(work: Path) -> list[str]:
    return ["--set", f"paths.work_dir={work}", "--set", "encoder.pretrained=none"]


def wait_for_port(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


@contextmanager
def serving(args: list[str]) -> Iterator[tuple[int, list[str]]]:
    """`fedsearch serve` in a child process; yields (port, its stdout lines so far)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(ADMIN_TOKEN_ENV, None)
    code = "import sys; from common.cli import main; sys.exit(main())"
    child = subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    try:
        for line in child.stdout:
            lines.append(line.strip())
            if line.startswith("serving on"):
                break
        assert lines and lines[-1].startswith("serving on"), lines
        wait_for_port(port)
        yield port, lines
    finally:
        child.terminate()
        child.wait(30)


def test_a_fresh_serve_prints_a_token_once_and_writes_need_it_over_tls(store, tmp_path):
    create_ca(tmp_path / "ca.crt", tmp_path / "ca.key", "test CA")
    cert, key = tmp_path / "svc.crt", tmp_path / "svc.key"
    issue_server_cert(tmp_path / "ca.crt", tmp_path / "ca.key", cert, key, ["127.0.0.1"])
    tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
    with serving([*settings(store), *tls]) as (port, lines):
        (token_line,) = [line for line in lines if line.startswith("admin token")]
        token = token_line.rsplit(" ", 1)[-1]
        assert lines[-1].startswith(f"serving on https://127.0.0.1:{port}/")
        with httpx.Client(
            base_url=f"https://127.0.0.1:{port}", verify=str(tmp_path / "ca.crt")
        ) as c:
            assert c.get("/healthz").status_code == 200
            refused = c.post("/items", json=ITEM)
            assert refused.status_code == 401
            assert refused.json()["error"]["field"] == "authorization"
            wrong = c.post("/items", json=ITEM, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            ok = c.post("/items", json=ITEM, headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)  # plain HTTP: no
    stored = (store / "search" / TOKEN_FILE).read_text()
    assert token not in stored and (store / "search" / TOKEN_FILE).stat().st_mode & 0o077 == 0
    with serving(settings(store)) as (port, lines):  # a restart: the same token, not shown
        assert not [line for line in lines if "admin token" in line]
        r = httpx.post(
            f"http://127.0.0.1:{port}/items",
            json=ITEM,
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200


def test_exposing_the_service_needs_a_token_and_a_signing_key(store, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    assert main(["serve", "--host", "0.0.0.0", *settings(store)]) == 2
    assert "needs an admin token" in capsys.readouterr().err
    assert not (store / "search" / TOKEN_FILE).exists()  # nothing generated for a remote host
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "from-the-environment")
    assert main(["serve", "--host", "10.1.2.3", *settings(store)]) == 2
    assert "needs search.public_key" in capsys.readouterr().err
    assert main(["serve", "--tls-cert", "a.pem", *settings(store)]) == 2
    assert "--tls-key" in capsys.readouterr().err


def test_the_token_sources_and_insecure_mode(store, monkeypatch):
    config = config_from_dict({"paths": {"work_dir": str(store)}})
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    admin, token = admin_for_serving(config, "127.0.0.1", insecure=False)
    assert token and admin.configured
    admin.check(f"Bearer {token}")
    assert admin_for_serving(config, "127.0.0.1", insecure=False)[1] is None  # not again
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "env-token")
    from_env = AdminAuth.from_config(config, store / "search")
    from_env.check("Bearer env-token")
    with pytest.raises(Exception, match="admin token required"):
        from_env.check(f"Bearer {token}")  # the environment wins over the file
    open_admin, _ = admin_for_serving(config, "0.0.0.0", insecure=True)
    open_admin.check(None)
    with pytest.raises(Exception, match="no admin token is set up"):
        AdminAuth(digest=None).check("Bearer anything")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("0.0.0.0", False),
     ("192.168.1.4", False), ("search.example.com", False)],
)  # fmt: skip
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback
