"""The Fleet gateway bounds request bodies while they arrive (chunked or not)."""

from __future__ import annotations

import socket

import server.deploy.gateway
from common.security.pki import create_ca
from server.deploy.gateway import create_gateway
from tests.server.search.conftest import running_server, stream_chunked

MB = 1 << 20


def test_a_chunked_body_over_the_limit_is_refused_while_it_arrives(tmp_path, monkeypatch):
    monkeypatch.setattr(server.deploy.gateway, "MAX_BODY_BYTES", 2 * MB)
    create_ca(tmp_path / "ca.crt", tmp_path / "ca.key", "test CA")
    unused = socket.socket()
    unused.bind(("127.0.0.1", 0))
    upstream = f"https://127.0.0.1:{unused.getsockname()[1]}"  # nothing listens there
    with running_server(create_gateway(upstream, tmp_path / "ca.crt")) as url:
        chunks = (b"x" * MB for _ in range(300))
        status, sent, response = stream_chunked(
            url, "/v1/fleet/push-messages", "application/protobuf", chunks
        )
        assert status == 413 and sent < 32 * MB, (status, sent)
        small = (b"x" * 1024 for _ in range(3))  # under the limit: forwarded (and 502 here)
        status, _, _ = stream_chunked(url, "/v1/fleet/push-messages", "application/x", small)
        assert status == 502
    unused.close()
