"""The device SDK: search through the service, personalize on the device, log locally.

``DeviceClient.search`` asks the endpoint for the top ``candidates`` items with
``return_vectors`` (no user vector leaves the device), reranks them with the private user
vector using ``common.model.personalization.rerank`` (the function the server uses, so the
order is the one server-side reranking would give), logs the search (base query vector,
shown ids and vectors) in the encrypted store and returns the top ``k``. ``report_click``
logs the click and updates the user vector. With ``model`` (``verified_adapters``, a
``common.security.trust.TrustedVersions`` over the registry the device syncs), the device
scores the candidates itself with the newest global adapter whose signature and files it
verified, instead of trusting the service's scores; a version that fails verification is
refused and the one held is kept. The results say who scored them (``scored_by``) and,
when a newer copy was refused, why (``model_error``); when the device holds no verified
version because its copy was refused, ``search`` raises ``DeviceModelError`` rather than
fall back to the service's scores (``fedsearch device sync`` fetches a fresh copy)::

    client = DeviceClient("http://127.0.0.1:8000", device.open_store())
    results = client.search(text="black watch", k=10)
    client.report_click(results.search_id, results.hits[0].id)

A spoken query (``audio``: a WAV file's bytes or path) goes as a multipart request; the
results say what the service heard (``transcript``), which is logged as the query text.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client.store import DeviceStore, LoggedSearch, PersonalState
from common.model.adapter import ADAPTER_FILE, QueryAdapter
from common.model.personalization import rerank, user_vector
from common.model.query_facets import candidate_matches
from common.security.trust import TrustedVersions, check_base_model

ADAPTER_MARK_FILE = "adapter-version.json"  # the usual name of ``verified_adapters``'s state


class SearchError(RuntimeError):
    """The search service refused the request or could not be reached."""

    def __init__(self, message: str, field: str | None = None, status: int | None = None):
        super().__init__(message)
        self.field, self.status = field, status


class DeviceModelError(SearchError):
    """The device's own copy of the global adapter was refused and it holds no other."""


@dataclass(frozen=True)
class DeviceHit:
    """One result as the device shows it: ``score`` after on-device reranking,
    ``base_score`` the service's score before any personalization."""

    id: str
    title: str
    category: str
    price: float | None
    score: float
    base_score: float
    photo_url: str | None


@dataclass(frozen=True)
class DeviceResults:
    search_id: str
    hits: list[DeviceHit]
    model_version: str
    candidates: int
    transcript: str | None = None
    transcript_confidence: float | None = None
    scored_by: str = "service"  # or "device:<version>": the device's verified adapter
    model_error: str | None = None  # why the device refused a newer copy, if it did


class DeviceClient:
    """Search, on-device personalization and the local log of one device.

    ``candidates`` must not exceed the service's ``search.max_k``; set it to the service's
    ``search.candidates`` for the same candidate set as server-side reranking.
    """

    def __init__(
        self,
        endpoint: str,
        store: DeviceStore,
        *,
        beta: float = 0.3,
        candidates: int = 200,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        model: TrustedVersions[QueryAdapter] | None = None,
    ) -> None:
        if candidates < 1 or beta < 0:
            raise ValueError("candidates must be >= 1 and beta >= 0")
        self.store = store
        self.beta = beta
        self.candidates = candidates
        self.model = model
        self._http = httpx.Client(base_url=endpoint, timeout=timeout_s, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def search(
        self,
        text: str | None = None,
        image: bytes | str | Path | None = None,
        *,
        k: int = 10,
        text_weight: float | None = None,
        filters: dict[str, Any] | None = None,
        audio: bytes | str | Path | None = None,
    ) -> DeviceResults:
        """Top ``k`` results reranked on the device; the search is logged locally."""
        if k < 1 or k > self.candidates:
            raise ValueError(f"k must be in 1..{self.candidates}")
        body: dict[str, Any] = {"k": self.candidates, "return_vectors": True}
        if text is not None:
            body["text"] = text
        if image is not None:
            body["image"] = base64.b64encode(_image_bytes(image)).decode("ascii")
        if text_weight is not None:
            body["text_weight"] = text_weight
        if filters:
            body["filters"] = filters
        if isinstance(audio, str | Path):
            audio = Path(audio).read_bytes()
        data = self._post("/search", body, audio)
        rows = data["results"]
        dim = len(data["query_vector"])
        vectors = np.array([r["vector"] for r in rows], dtype=np.float32).reshape(len(rows), dim)
        base, scored_by, model_error = self._base_scores(data, vectors)
        heard = data.get("transcript")
        query = " ".join(part for part in (text, heard) if part)  # the text the service ranked
        matches = candidate_matches(
            query,
            [str(r.get("category", "")) for r in rows],
            [dict(r.get("attributes") or {}) for r in rows],
        )
        user = self.store.load_state().user_vector
        order, scores = rerank(base, vectors, user, self.beta, None, matches)
        top, top_scores = order[:k], scores[:k]
        entry = self.store.log_search(
            query,
            np.asarray(data["query_vector"], dtype=np.float32),
            [rows[i]["id"] for i in top],
            vectors[top],
            model_version=str(data["model_version"]),
        )
        hits = [_hit(rows[i], float(s)) for i, s in zip(top, top_scores, strict=True)]
        return DeviceResults(
            entry.search_id,
            hits,
            str(data["model_version"]),
            len(rows),
            heard,
            data.get("transcript_confidence"),
            scored_by,
            model_error,
        )

    def _base_scores(
        self, data: dict[str, Any], vectors: np.ndarray
    ) -> tuple[np.ndarray, str, str | None]:
        """(scores, who scored, refusal): the device's own from its verified global adapter
        when it has a model, else the service's."""
        service = np.array([r["base_score"] for r in data["results"]], dtype=np.float32)
        if self.model is None:
            return service, "service", None
        self.model.refresh()
        adapter, error = self.model.value, self.model.last_error
        if adapter is None and error:
            raise DeviceModelError(
                f"the device's copy of the model was refused ({error}); it holds no verified "
                "version: run `fedsearch device sync` before searching"
            )
        if adapter is None:  # no copy yet (nothing synced): the service's scores, said so
            return service, "service", None
        query = np.asarray(data["query_vector"], dtype=np.float32)
        return vectors @ adapter.apply_numpy(query), f"device:{self.model.version}", error

    def report_click(self, search_id: str, item_id: str) -> None:
        """Log the click and move the user vector to the mean of the clicked items."""
        self.store.log_click(search_id, item_id)
        clicked = _clicked_vectors(self.store.searches())

        def update(state: PersonalState) -> PersonalState:
            state.user_vector = user_vector(clicked)
            return state

        self.store.update_state(update)

    def _post(self, path: str, body: dict[str, Any], audio: bytes | None = None) -> dict[str, Any]:
        """JSON, or multipart with the audio as a WAV part (other fields as form fields)."""
        try:
            if audio is None:
                response = self._http.post(path, json=body)
            else:
                fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in body.items()}
                files = {"audio": ("query.wav", audio, "audio/wav")}
                response = self._http.post(path, data=fields, files=files)
        except httpx.HTTPError as exc:
            raise SearchError(f"search service unreachable: {exc}") from exc
        if response.status_code >= 400:
            raise _error(response)
        return response.json()


def _image_bytes(image: bytes | str | Path) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()


def _hit(row: dict[str, Any], score: float) -> DeviceHit:
    return DeviceHit(
        id=row["id"],
        title=row.get("title", ""),
        category=row.get("category", ""),
        price=row.get("price"),
        score=score,
        base_score=float(row["base_score"]),
        photo_url=row.get("photo_url"),
    )


def _clicked_vectors(log: list[LoggedSearch]) -> np.ndarray:
    rows = [e.shown_vectors[e.shown.index(e.clicked)] for e in log if e.clicked is not None]
    return np.stack(rows) if rows else np.zeros((0, len(log[0].query_vector)), np.float32)


def _error(response: httpx.Response) -> SearchError:
    try:
        detail = response.json()["error"]
        field, message = detail["field"], detail["message"]
    except (ValueError, KeyError, TypeError):
        field, message = None, response.text[:200]
    where = f"{field}: " if field else ""
    return SearchError(
        f"search failed ({response.status_code}): {where}{message}", field, response.status_code
    )


def verified_adapters(
    registry: str | Path,
    public_key: Ed25519PublicKey,
    *,
    state_file: str | Path | None = None,
    base_model: str | None = None,
) -> TrustedVersions[QueryAdapter]:
    """The registry's newest adapter version signed by ``public_key``, refreshed on use.

    ``state_file`` (on the device's own disk, e.g. in its folder) keeps the highest version
    ever accepted, so a replayed or downgraded registry copy is refused even after the app
    restarts; without it the mark lives as long as the returned object (simulations).
    ``base_model``: the encoder the device's vectors come from; a version trained on
    another is refused, naming both."""

    def load(folder: Path, manifest: dict[str, Any]) -> QueryAdapter:
        check_base_model(folder, manifest, base_model)
        return QueryAdapter.load(folder / ADAPTER_FILE)

    return TrustedVersions(
        Path(registry),
        public_key,
        load,
        state_file=None if state_file is None else Path(state_file),
    )
