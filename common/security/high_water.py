"""The persisted high-water mark of a version consumer (device or service).

File format (JSON, replaced atomically and fsynced)::

    {"format": "fedsearch-version-mark/1", "highest": "v0007", "pinned": null,
     "digest": "<sha256 of the served version's manifest>"}

``highest`` is the highest version ever accepted; nothing at or below it is taken again
automatically, so an old signed version copied under a new name, a downgrade of the
registry or a restart cannot move the consumer backwards. ``pinned`` is set only by an
explicit operator rollback: the version served instead of ``highest`` until a version
above ``highest`` is published. ``digest`` identifies the served version's manifest, so
after a restart only that same version is served again, not another one of its name.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.security.versions import IntegrityError, version_number

MARK_FORMAT = "fedsearch-version-mark/1"


@dataclass(frozen=True)
class VersionMark:
    """The highest accepted version, an operator's rollback pin (names or None) and the
    digest of the served version's manifest."""

    highest: str | None = None
    pinned: str | None = None
    digest: str | None = None

    @property
    def floor(self) -> int:
        """Versions numbered at or below this are not taken without a rollback."""
        return version_number(self.highest) if self.highest else 0

    @property
    def serving(self) -> str | None:
        """The version to serve after a restart when nothing newer verifies."""
        return self.pinned or self.highest

    def accepted(self, name: str, manifest: dict[str, Any]) -> VersionMark:
        """The mark after ``name`` (above ``highest``) was taken: any pin is dropped."""
        return VersionMark(highest=name, pinned=None, digest=manifest_digest(manifest))

    def rolled_back_to(self, name: str, manifest: dict[str, Any]) -> VersionMark:
        return VersionMark(self.highest, pinned=name, digest=manifest_digest(manifest))


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of a manifest's canonical JSON form."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def load_mark(path: Path | None) -> VersionMark:
    """The mark stored at ``path`` (a fresh one if the file does not exist yet)."""
    if path is None or not Path(path).is_file():
        return VersionMark()
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("format") != MARK_FORMAT:
            raise ValueError(f"format {data.get('format')!r}")
        mark = VersionMark(data["highest"], data["pinned"], data["digest"])
        for name in (mark.highest, mark.pinned):
            if name is not None:
                version_number(name)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"{path}: damaged version mark ({exc})") from exc
    return mark


def save_mark(path: Path | None, mark: VersionMark) -> None:
    """Write ``mark`` durably (a temporary file fsynced, then renamed over ``path``)."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"format": MARK_FORMAT, **asdict(mark)}
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(record, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
