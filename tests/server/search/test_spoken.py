"""Spoken queries through the service: POST /search with an ``audio`` part (espeak-ng's
Klatt voice; skips without espeak-ng)."""

import json
import shutil
import struct
import subprocess
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from common.speech.transcript import Transcript
from server.search.spoken import with_transcript
from tests.server.search.conftest import ADMIN_HEADERS, ADMIN_TOKEN
from tests.server.search.test_audio import fmt_chunk, wav


@pytest.fixture
def speech_app(tmp_path, search_items, search_vectors, untrained_encoder):
    """``speech_app(**speech_overrides)``: the service over the 50-item catalog."""
    from common.config import config_from_dict
    from server.search.catalog_build import create_catalog
    from server.search.service import create_app

    def make(**speech: object):
        settings = {"paths": {"work_dir": str(tmp_path)}, "speech": speech}
        config = config_from_dict({**settings, "search": {"admin_token": ADMIN_TOKEN}})
        catalog = create_catalog(config, search_items, search_vectors, untrained_encoder.version)
        return create_app(config, encoder=untrained_encoder, catalog=catalog, watch_registry=False)

    return make


@pytest.fixture
def client(speech_app):
    with TestClient(speech_app(), headers=ADMIN_HEADERS) as c:
        yield c


def spoken(client, audio: bytes, **fields):
    files = {"audio": ("query.wav", audio, "audio/wav")}
    return client.post("/search", files=files, data={k: str(v) for k, v in fields.items()})


def test_a_spoken_query_is_heard_and_searched(client, speak, search_items):
    body = spoken(client, speak("black watches for men"), k=5).json()
    assert body["transcript"] == "black watches for men"
    assert 0 < body["transcript_confidence"] <= 1
    categories = {it.id: it.category for it in search_items}
    assert [categories[r["id"]] for r in body["results"][:3]] == ["Watches"] * 3
    typed = client.post("/search", json={"text": "black watches for men", "k": 5}).json()
    assert [r["id"] for r in body["results"]] == [r["id"] for r in typed["results"]]


def test_speech_joins_typed_text_and_a_photo(client, speak, search_items):
    photo = open(search_items[3].photo, "rb").read()
    files = {"audio": ("q.wav", speak("sports shoes"), "audio/wav"), "image": ("p.jpg", photo)}
    fused = client.post("/search", files=files, data={"text": "white", "k": "8"}).json()
    assert fused["transcript"] == "sports shoes"
    typed = client.post(
        "/search", files={"image": ("p.jpg", photo)}, data={"text": "white sports shoes", "k": "8"}
    ).json()
    assert [r["id"] for r in fused["results"]] == [r["id"] for r in typed["results"]]
    assert "transcript" not in typed


def test_the_vocabulary_follows_upserts_and_deletes(client, speak):
    audio = speak("red umbrellas")
    before = spoken(client, audio, k=3).json()
    assert not {"umbrella", "umbrellas"} & set(before["transcript"].split())
    words = client.get("/version").json()["speech"]["catalog_words"]

    item = {"id": "new-umbrella", "title": "Red Rain Umbrella", "category": "Umbrellas",
            "attributes": {"baseColour": "Red"}}  # fmt: skip
    assert client.post("/items", json={"items": [item]}).status_code == 200
    assert client.get("/version").json()["speech"]["catalog_words"] == words + 3  # rain, ...
    after = spoken(client, audio, k=3).json()
    assert after["transcript"] == "red umbrellas"
    assert after["results"][0]["id"] == "new-umbrella"

    assert client.delete("/items/new-umbrella").status_code == 200
    assert "umbrellas" not in spoken(client, audio, k=3).json()["transcript"].split()


BAD_AUDIO = {
    "empty": (b"", 422, "the audio is empty"),
    "not audio": (b"<html>surely not a sound</html>", 415, "not a WAV file"),
    "too long": (wav(np.zeros(16 * 8000), rate=8000), 413, "at most 15 s"),
    "wrong format": (b"OggS\x00\x02" + bytes(200), 415, "looks like Ogg (Opus or Vorbis)"),
    "corrupted header": (wav(np.zeros(100), fmt=fmt_chunk()[:20] + struct.pack("<HH", 3, 16)),
                         422, "damaged WAV header: 1 channels, 16000 Hz, 16 bits, block align 3"),
    "too big": (wav(np.zeros(40_000)), 413, "audio over 50000 bytes"),
    "silence": (wav(np.zeros(16_000)), 422, "no speech recognized"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_AUDIO)
def test_bad_audio_gets_a_json_4xx_and_the_service_stays_up(speech_app, case):
    data, status, message = BAD_AUDIO[case]
    with TestClient(speech_app(**({"max_bytes": 50_000} if case == "too big" else {}))) as c:
        response = spoken(c, data)
        assert response.status_code == status
        assert response.json()["error"]["field"] == "audio"
        assert message in response.json()["error"]["message"]
        assert c.get("/healthz").status_code == 200
        assert c.post("/search", json={"text": "watch"}).status_code == 200


def test_speech_can_be_switched_off(speech_app):
    with TestClient(speech_app(engine="off")) as c:
        response = spoken(c, wav(np.zeros(1600)))
        assert response.status_code == 422 and "off" in response.json()["error"]["message"]
        assert c.get("/version").json()["speech"]["engine"] == "off"


def test_nothing_heard_with_other_input_still_searches():
    assert with_transcript({"text": " nike "}, Transcript(""), False)["text"] == "nike"
    assert with_transcript({}, Transcript(""), True) == {"text": ""}
    assert with_transcript({"text": "red"}, Transcript("shoes", 0.5), False)["text"] == "red shoes"


class SlowTranscriber:
    name = "slow"

    def use_vocabulary(self, vocabulary) -> None:
        pass

    def transcribe(self, samples) -> Transcript:
        time.sleep(1.5)
        return Transcript("watches")


def test_recognition_does_not_block_other_requests(make_app, serve_app):
    app, _ = make_app()
    app.state.service.speech.transcriber = SlowTranscriber()
    with serve_app(app) as url:
        results = {}

        def search() -> None:
            files = {"audio": ("q.wav", wav(np.zeros(1600)), "audio/wav")}
            results["spoken"] = httpx.post(f"{url}/search", files=files, timeout=30)

        thread = threading.Thread(target=search)
        thread.start()
        time.sleep(0.3)  # the recognizer is busy now
        start = time.monotonic()
        assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
        waited = time.monotonic() - start
        thread.join()
    assert results["spoken"].json()["transcript"] == "watches"
    assert waited < 1.0


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_readme_commands(make_app, serve_app, speak, tmp_path):  # speak: needs espeak-ng
    """The README's spoken query: a WAV made with espeak-ng, sent with curl."""
    make_wav = [
        "espeak-ng",
        "-v",
        "en-us+klatt",
        "-s",
        "150",
        "-w",
        "query.wav",
        "black watches for men",
    ]
    subprocess.run(make_wav, cwd=tmp_path, check=True)
    app, _ = make_app()
    with serve_app(app) as url:
        curl = ["curl", "-s", "-F", "audio=@query.wav", "-F", "k=3", f"{url}/search"]
        body = json.loads(subprocess.run(curl, cwd=tmp_path, capture_output=True).stdout)
    assert body["transcript"] == "black watches for men" and len(body["results"]) == 3
