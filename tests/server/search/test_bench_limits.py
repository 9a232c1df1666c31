"""``fedsearch bench-limits``: its attacks and measurements, against an in-process server."""

from __future__ import annotations

import os

import pytest

import server.search.bench_limits as bench
from common.cli import main
from tests.server.search.conftest import running_server


@pytest.fixture
def url(make_app, monkeypatch):
    monkeypatch.setattr(bench, "TOKEN", "test-admin-token")
    app, config = make_app(max_image_pixels=100_000_000, header_timeout_s=1.0)
    with running_server(app, config.search) as served:
        yield served


def test_every_attack_is_answered_and_measured(url, monkeypatch):
    png, zeros = bench.gray_png, bench._zeros
    monkeypatch.setattr(bench, "gray_png", lambda w, h: png(w // 10, h // 10))  # 1,300 px
    monkeypatch.setattr(bench, "_zeros", lambda mb: zeros(min(mb, 40)))
    rows = {row["input"]: row for row in bench.attacks(url, os.getpid())}
    for name in ("500 MB chunked JSON", "500 MB chunked JSON to /items"):
        assert rows[name]["status"] == 413 and rows[name]["sent_mb"] < 32
    assert rows["JSON nested 1,000 deep"]["status"] == 400
    assert rows["malformed multipart"]["status"] == 400
    slow = rows["headers at 1 byte / 0.5 s"]
    assert slow["seconds"] < 5 and slow["idle_connections_left"] == 0
    report = {"idle_rss_mb": 1.0, "attacks": list(rows.values())}
    report["decode"] = bench.healthz_during_decode(url, os.getpid(), png(3000, 3000))
    assert report["decode"]["status"] == 200 and report["decode"]["healthz_checks"] >= 1
    bench.print_limits_report(report)


def test_bench_limits_refuses_a_tiny_store(capsys):
    assert main(["bench-limits", "--items", "3"]) == 2
    assert "--items" in capsys.readouterr().err
