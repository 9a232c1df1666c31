"""What ``fedsearch serve`` checks before it listens: secure by default.

- Catalog writes and admin endpoints need the admin token (``server.search.auth``). On a
  loopback address the first run creates one and prints it once; on any other address a
  token must already exist (config, environment, or the token file of an earlier run).
- Beyond loopback the service also needs a model-signing public key (``search.public_key``),
  so that nobody who can write to the registry can change the model it serves.
- ``--insecure`` lifts both, for local experiments: the admin endpoints are then open.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging

from common.cli import UsageError
from common.config import Config, config_from_dict
from server.search.auth import AdminAuth, create_token_file
from server.search.catalog_build import store_path

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serving_config(config: Config, args: argparse.Namespace) -> Config:
    """``config`` with the command's TLS and demo flags applied, and checked."""
    search: dict[str, object] = {}
    if args.tls_cert is not None:
        search["tls_certfile"] = args.tls_cert
    if args.tls_key is not None:
        search["tls_keyfile"] = args.tls_key
    if args.demo:
        search["demo"] = True
    config = config_from_dict({"search": search}, config) if search else config
    cert, key = config.search.tls_certfile, config.search.tls_keyfile
    if bool(cert) != bool(key):
        raise UsageError("--tls-cert and --tls-key (search.tls_certfile, tls_keyfile) go together")
    return config


def admin_for_serving(config: Config, host: str, *, insecure: bool) -> tuple[AdminAuth, str | None]:
    """The admin check to serve with, and a newly created token to print once (or None).

    Raises ``UsageError`` when ``host`` is exposed beyond loopback without a token or
    without a signing key, unless ``insecure``.
    """
    if insecure:
        log.warning("--insecure: catalog writes and admin endpoints need no token")
        return AdminAuth.insecure(), None
    store = store_path(config)
    admin = AdminAuth.from_config(config, store)
    exposed = not is_loopback(host)
    if exposed and not admin.configured:
        raise UsageError(
            f"--host {host}: a service reachable beyond this machine needs an admin token: set "
            "search.admin_token or $FEDSEARCH_ADMIN_TOKEN (or run `fedsearch serve` once on "
            "127.0.0.1 to create one), or pass --insecure for a local experiment"
        )
    if exposed and not config.search.public_key:
        raise UsageError(
            f"--host {host}: a service reachable beyond this machine needs search.public_key "
            "(the model-signing public key), or --insecure for a local experiment"
        )
    if admin.configured:
        return admin, None
    token = create_token_file(store)
    return AdminAuth.from_config(config, store), token
