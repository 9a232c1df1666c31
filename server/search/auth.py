"""The admin token that guards catalog writes and admin endpoints.

Where the token comes from, first found wins: ``$FEDSEARCH_ADMIN_TOKEN``, the config's
``search.admin_token``, else the token file ``<store>/admin_token.sha256``, which holds
only the token's sha256 (hex; mode 0600). The first ``fedsearch serve`` on a loopback
address without a token creates that file and prints the token once; it is not stored
anywhere else. Requests send ``Authorization: Bearer <token>``; the comparison is in
constant time on the digests. Without any token the admin endpoints answer 401 (closed),
unless the service runs with ``--insecure`` (open, for local experiments only).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from common.config import Config
from common.security.keyfiles import read_owner_only, write_owner_only
from server.search.api_errors import ApiError

ADMIN_TOKEN_ENV = "FEDSEARCH_ADMIN_TOKEN"
TOKEN_FILE = "admin_token.sha256"


@dataclass(frozen=True)
class AdminAuth:
    """Checks ``Authorization`` headers against the token's sha256 (None: no token)."""

    digest: str | None
    open: bool = False

    @classmethod
    def insecure(cls) -> AdminAuth:
        """No check at all: ``fedsearch serve --insecure``."""
        return cls(digest=None, open=True)

    @classmethod
    def from_config(cls, config: Config, store: Path) -> AdminAuth:
        token = configured_token(config)
        if token:
            return cls(_digest(token))
        path = store / TOKEN_FILE
        if path.is_file():
            return cls(read_owner_only(path).decode("ascii").strip())
        return cls(None)

    @property
    def configured(self) -> bool:
        return self.digest is not None

    def check(self, authorization: str | None) -> None:
        """Raise ``ApiError`` 401 unless the header carries the token."""
        if self.open:
            return
        if self.digest is None:
            raise ApiError(
                401, "authorization", "no admin token is set up: run `fedsearch serve` once"
            )
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(_digest(token), self.digest):
            raise ApiError(401, "authorization", "admin token required (Authorization: Bearer)")


def configured_token(config: Config) -> str:
    """The token given by the environment or the config ("" if neither)."""
    return os.environ.get(ADMIN_TOKEN_ENV, "") or config.search.admin_token


def create_token_file(store: Path) -> str:
    """Generate a token, store its sha256 in the store's token file, return the token."""
    token = secrets.token_urlsafe(32)
    write_owner_only(store / TOKEN_FILE, _digest(token).encode("ascii"))
    return token


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
