"""Published model versions for devices: ``GET /models`` lists the registry's versions and
the one served, ``GET /models/{version}/{file}`` returns one file of a version (its
manifest, signature or a file the manifest lists). Devices verify what they fetch against
the deployment's signing key (``fedsearch device sync``); the service vouches for nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse

from common.security.signing import SIGNATURE_FILE
from common.security.versions import MANIFEST, IntegrityError, list_versions, read_manifest
from server.search.api_errors import ApiError


def version_files(folder: Path) -> list[str]:
    """The files a device may fetch from a version folder."""
    try:
        listed = list(read_manifest(folder).get("files", {}))
    except IntegrityError:
        return []
    return [MANIFEST, SIGNATURE_FILE, *listed]


def add_model_routes(app: FastAPI, registry: Path, served: Callable[[], str]) -> None:
    @app.get("/models", summary="Published model versions (newest last) and the one served")
    def models() -> dict[str, Any]:
        return {"versions": [v.name for v in list_versions(registry)], "served": served()}

    @app.get("/models/{version}/{name}", summary="One file of a published version")
    def model_file(version: str, name: str) -> FileResponse:
        folder = {v.name: v for v in list_versions(registry)}.get(version)
        if folder is None:
            raise ApiError(404, "version", f"no published version {version!r}")
        if name not in version_files(folder) or not (folder / name).is_file():
            raise ApiError(404, "file", f"{version} has no file {name!r}")
        return FileResponse(folder / name, headers={"Cache-Control": "no-cache"})
