import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from client.sdk import DeviceClient, SearchError
from client.store import DeviceStore, PersonalState, generate_key
from common.config import config_from_dict
from common.model.fusion import l2_normalize
from common.model.query_facets import candidate_matches

CANDIDATES = 20
BETA = 1.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def service_url(tmp_path_factory, small_catalog, untrained_encoder):
    """The real search service on 127.0.0.1 over the first 40 catalog items."""
    from server.search.catalog_build import build_catalog, fashion_items
    from server.search.service import create_app

    link = small_catalog.parent / "fashion_product_images_small_subset"
    if not link.exists():
        link.symlink_to(small_catalog)
    work = tmp_path_factory.mktemp("sdk-work")
    config = config_from_dict(
        {
            "paths": {"data_dir": str(small_catalog.parent), "work_dir": str(work)},
            "search": {"candidates": CANDIDATES},
        }
    )
    catalog = build_catalog(config, untrained_encoder, fashion_items(config), progress=False)
    app = create_app(config, encoder=untrained_encoder, catalog=catalog, watch_registry=False)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="none")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "search service did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _server_ids(url: str, text: str, k: int, user: np.ndarray | None) -> list[str]:
    body = {"text": text, "k": k}
    if user is not None:
        body |= {"user_vector": user.tolist(), "personalization_weight": BETA}
    response = httpx.post(f"{url}/search", json=body, timeout=30)
    response.raise_for_status()
    return [r["id"] for r in response.json()["results"]]


def test_local_rerank_matches_server_rerank(service_url: str, tmp_path: Path) -> None:
    text, k = "blue shirt for men", 5
    base_ids = _server_ids(service_url, text, CANDIDATES, None)
    # A user who likes the items ranked last among the candidates: reranking must move them.
    rows = httpx.post(
        f"{service_url}/search", json={"text": text, "k": CANDIDATES, "return_vectors": True}
    ).json()["results"]
    user = l2_normalize(np.mean([rows[-1]["vector"], rows[-2]["vector"]], axis=0))

    store = DeviceStore(tmp_path, generate_key())
    store.save_state(PersonalState(user_vector=user))
    with DeviceClient(service_url, store, beta=BETA, candidates=CANDIDATES) as client:
        results = client.search(text=text, k=k)

    local_ids = [h.id for h in results.hits]
    assert local_ids == _server_ids(service_url, text, k, user)
    assert local_ids != base_ids[:k]  # personalization changed the order
    assert results.candidates == CANDIDATES
    scores = [h.score for h in results.hits]
    assert scores == sorted(scores, reverse=True)

    (entry,) = store.searches()
    assert entry.search_id == results.search_id and list(entry.shown) == local_ids
    assert entry.query == text and entry.query_vector.shape == (len(rows[0]["vector"]),)
    assert entry.clicked is None


def test_device_and_service_gate_the_rerank_alike(service_url: str, tmp_path: Path) -> None:
    text = "women"  # names a gender: the candidates for women stay above the others
    rows = httpx.post(
        f"{service_url}/search", json={"text": text, "k": CANDIDATES, "return_vectors": True}
    ).json()["results"]
    named = candidate_matches(text, [r["category"] for r in rows], [r["attributes"] for r in rows])
    assert named is not None and 0 < named.sum() < len(rows)
    # a user who likes the candidates the query does not name
    user = l2_normalize(
        np.mean([r["vector"] for r, m in zip(rows, named, strict=True) if not m], axis=0)
    )
    store = DeviceStore(tmp_path, generate_key())
    store.save_state(PersonalState(user_vector=user))
    with DeviceClient(service_url, store, beta=BETA, candidates=CANDIDATES) as client:
        local = [h.id for h in client.search(text=text, k=CANDIDATES).hits]
    assert local == _server_ids(service_url, text, CANDIDATES, user)
    position = {r["id"]: i for i, r in enumerate(rows)}
    gated = [bool(named[position[i]]) for i in local]
    assert gated == sorted(gated, reverse=True)


def test_click_is_logged_and_updates_user_vector(service_url: str, tmp_path: Path) -> None:
    store = DeviceStore(tmp_path, generate_key())
    with DeviceClient(service_url, store, candidates=CANDIDATES) as client:
        first = client.search(text="watch", k=3)
        client.report_click(first.search_id, first.hits[2].id)
        second = client.search(text="shoes", k=3)
        client.report_click(second.search_id, second.hits[0].id)
    log = store.searches()
    assert [e.clicked for e in log] == [first.hits[2].id, second.hits[0].id]
    clicked = np.stack([e.shown_vectors[e.shown.index(e.clicked)] for e in log])
    expected = l2_normalize(clicked.mean(axis=0))
    np.testing.assert_allclose(store.load_state().user_vector, expected, atol=1e-6)


def test_bad_request_gives_named_field(service_url: str, tmp_path: Path) -> None:
    store = DeviceStore(tmp_path, generate_key())
    with DeviceClient(service_url, store, candidates=CANDIDATES) as client:
        with pytest.raises(SearchError) as info:
            client.search(text=None, k=3)
    assert info.value.status is not None and 400 <= info.value.status < 500
    assert store.searches() == []


def test_unreachable_service_is_a_clear_error(tmp_path: Path) -> None:
    store = DeviceStore(tmp_path, generate_key())
    with DeviceClient(f"http://127.0.0.1:{_free_port()}", store, timeout_s=2) as client:
        with pytest.raises(SearchError, match="unreachable"):
            client.search(text="watch")


def _publish(registry: Path, adapter, private_key) -> Path:
    from common.security.signing import signer
    from server.federation.publish import publish_adapter

    return publish_adapter(
        registry, adapter.get_weights(), {"round": 1}, finalize=signer(private_key)
    )


def test_device_scores_with_its_verified_adapter_and_keeps_it_when_a_version_is_bad(
    service_url: str, tmp_path: Path
) -> None:
    import torch
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from client.sdk import verified_adapters
    from common.model.adapter import QueryAdapter

    key, other_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    registry = tmp_path / "registry"
    torch.manual_seed(0)
    adapter = QueryAdapter(384, 8)
    torch.nn.init.normal_(adapter.up.weight, std=0.5)
    _publish(registry, adapter, key)

    store = DeviceStore(tmp_path / "store", generate_key())
    model = verified_adapters(registry, key.public_key(), state_file=tmp_path / "mark.json")
    with DeviceClient(service_url, store, beta=0.0, candidates=CANDIDATES, model=model) as client:
        results = client.search(text="blue shirt for men", k=CANDIDATES)
        assert model.version == "v0001"
        (entry,) = store.searches()
        rows = httpx.post(
            f"{service_url}/search",
            json={"text": "blue shirt for men", "k": CANDIDATES, "return_vectors": True},
        ).json()["results"]
        vectors = {r["id"]: np.array(r["vector"], dtype=np.float32) for r in rows}
        own = adapter.apply_numpy(entry.query_vector)
        expected = sorted(vectors, key=lambda i: -float(vectors[i] @ own))
        assert [h.id for h in results.hits] == expected
        assert expected != [r["id"] for r in rows]  # the service's own order differs

        tampered = _publish(registry, adapter, key)  # v0002, then altered after signing
        (tampered / "adapter.safetensors").write_bytes(b"not the signed weights")
        _publish(registry, adapter, other_key)  # v0003, signed by another key
        client.search(text="watch", k=3)
        assert model.version == "v0001" and model.last_error


def test_device_refuses_replayed_and_downgraded_versions_across_restarts(tmp_path: Path) -> None:
    import shutil

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from client.sdk import verified_adapters
    from common.model.adapter import QueryAdapter
    from common.security.versions import LATEST

    key, registry, mark = Ed25519PrivateKey.generate(), tmp_path / "registry", tmp_path / "m"
    for _ in range(2):
        _publish(registry, QueryAdapter(384, 8), key)
    model = verified_adapters(registry, key.public_key(), state_file=mark)
    assert model.refresh() is True and model.version == "v0002"
    shutil.copytree(registry / "v0001", registry / "v0003")  # copy-replay of a signed v0001
    assert model.refresh() is False and "not v0003" in model.last_error
    shutil.rmtree(registry / "v0003")
    shutil.rmtree(registry / "v0002")  # downgrade: only v0001 is left
    (registry / LATEST).write_text("v0001")
    restarted = verified_adapters(registry, key.public_key(), state_file=mark)  # app restart
    assert restarted.refresh() is False and restarted.value is None
    assert "explicit rollback" in restarted.last_error
    _publish(registry, QueryAdapter(384, 8), key)  # the genuine next version: v0002 again?
    assert restarted.refresh() is False  # a new v0002 is at the mark: not newer, refused
    _publish(registry, QueryAdapter(384, 8), key)
    assert restarted.refresh() is True and restarted.version == "v0003"


def test_a_spoken_query_is_sent_as_audio_and_logged_as_heard(
    service_url: str, tmp_path: Path, speak
) -> None:
    query = tmp_path / "query.wav"
    query.write_bytes(speak("black watches"))
    store = DeviceStore(tmp_path, generate_key())
    with DeviceClient(service_url, store, candidates=CANDIDATES) as client:
        spoken = client.search(audio=query, k=3)
        watches = {"category": "Watches"}
        fused = client.search(text="men", audio=query.read_bytes(), k=3, filters=watches)
        with pytest.raises(SearchError) as info:
            client.search(audio=b"not a wav file", k=3)
    assert spoken.transcript == "black watches" and 0 < spoken.transcript_confidence <= 1
    assert [h.id for h in spoken.hits] == _server_ids(service_url, "black watches", 3, None)
    assert fused.transcript == "black watches"
    assert all(h.category == "Watches" for h in fused.hits)
    assert [e.query for e in store.searches()] == ["black watches", "men black watches"]
    assert info.value.status == 415 and info.value.field == "audio"
