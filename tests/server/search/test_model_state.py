"""Versions that cannot be replayed, in the service: the high-water mark survives restarts,
going back is the operator's ``/admin/rollback`` (or ``fedsearch serve --rollback-to``)."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

from common.cli import main
from common.model.adapter import ADAPTER_FILE
from common.security.signing import generate_signing_key, load_private_key, signer
from common.security.versions import LATEST
from tests.server.search.conftest import ADMIN_HEADERS
from tests.server.search.test_hot_swap import publish, random_adapter


@pytest.fixture
def signed(tmp_path, make_app):
    """(publish_next, start_app): signed versions and a service that checks them."""
    generate_signing_key(tmp_path / "sign.key", tmp_path / "sign.pub")
    private = load_private_key(tmp_path / "sign.key")
    seeds = iter(range(1, 100))

    def publish_next(registry):
        return publish(registry, random_adapter(next(seeds)), finalize=signer(private))

    def start_app(reopen: bool):
        return make_app(reopen=reopen, public_key=str(tmp_path / "sign.pub"))

    return publish_next, start_app


def served(client) -> tuple[str, dict]:
    version = client.get("/version").json()
    return version["model"]["version"], version["registry"]


def test_copy_replay_is_refused_and_the_next_genuine_version_taken(signed):
    publish_next, start_app = signed
    app, config = start_app(reopen=False)
    registry = config.paths.registry
    with TestClient(app, headers=ADMIN_HEADERS) as c:
        publish_next(registry), publish_next(registry)
        assert c.post("/admin/reload").json()["model_version"] == "v0002"
        shutil.copytree(registry / "v0001", registry / "v0003")  # signed v0001 as v0003
        (registry / LATEST).write_text("v0003")
        result = c.post("/admin/reload").json()
        assert result["swapped"] is False and "v0003" in result["error"]
        publish_next(registry)  # v0004: genuine, newer
        assert c.post("/admin/reload").json() == {
            "swapped": True, "model_version": "v0004", "error": None
        }  # fmt: skip
        assert served(c)[1]["highest_accepted"] == "v0004"


def test_the_newest_valid_version_is_served_whatever_latest_names(signed):
    publish_next, start_app = signed
    app, config = start_app(reopen=False)
    app.state.service.close()
    publish_next(config.paths.registry), publish_next(config.paths.registry)
    (config.paths.registry / LATEST).write_text("v0001")
    app, _ = start_app(reopen=True)
    with TestClient(app) as c:
        assert served(c)[0] == "v0002"


def test_downgrade_restart_and_operator_rollback(signed):
    publish_next, start_app = signed
    app, config = start_app(reopen=False)
    registry = config.paths.registry
    for _ in range(3):
        publish_next(registry)
    with TestClient(app, headers=ADMIN_HEADERS) as c:
        assert c.post("/admin/reload").json()["model_version"] == "v0003"
        with (registry / "v0003" / ADAPTER_FILE).open("r+b") as fh:  # the served one altered
            fh.seek(100)
            fh.write(b"\x00\x01\x02\x03")
        result = c.post("/admin/reload").json()
        assert result["model_version"] == "v0003"  # the verified copy stays in memory
        assert "v0003 no longer verifies" in served(c)[1]["last_error"]

    app, _ = start_app(reopen=True)  # a restart: v0003 refused, and no silent downgrade
    with TestClient(app, headers=ADMIN_HEADERS) as c:
        version, registry_state = served(c)
        assert version == "base" and "explicit rollback" in registry_state["last_error"]
        anonymous = c.post(
            "/admin/rollback", json={"version": "v0002"}, headers={"Authorization": ""}
        )
        assert anonymous.status_code == 401
        refused = c.post("/admin/rollback", json={"version": "v0009"})
        assert refused.status_code == 409 and refused.json()["error"]["field"] == "version"
        ok = c.post("/admin/rollback", json={"version": "v0002"})
        assert ok.json() == {"model_version": "v0002", "pinned": True}
        assert served(c)[0] == "v0002" and served(c)[1]["pinned"] == "v0002"

    app, _ = start_app(reopen=True)  # the pin survives a restart
    with TestClient(app, headers=ADMIN_HEADERS) as c:
        assert served(c)[0] == "v0002"
        publish_next(registry)  # v0004 ends the pin
        assert c.post("/admin/reload").json()["model_version"] == "v0004"
        assert served(c)[1]["pinned"] is None


def test_serve_rollback_to_refuses_a_version_that_does_not_verify(make_app, capsys):
    app, config = make_app()
    app.state.service.close()
    app_args = ["--set", f"paths.work_dir={config.paths.work}", "--set", "encoder.pretrained=none"]
    app_args += ["--set", "search.admin_token=x"]
    config.paths.registry.mkdir(parents=True)
    assert main(["serve", "--rollback-to", "v0001", *app_args]) == 2
    assert "--rollback-to: cannot roll back to v0001" in capsys.readouterr().err
