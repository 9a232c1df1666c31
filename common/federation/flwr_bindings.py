"""Swapping our functions into flwr's SecAgg+ modules by name, without editing flwr.

flwr's client mod and server workflow import the functions they use by name, so a
replacement must be bound in each module that uses it. ``Bindings`` maps a flwr module to
the names it uses; ``rebind`` and ``bound`` install and check a set of replacements taken
from one of our modules' namespace (``globals()``). Used by ``prime_shamir`` and
``x25519_keys``; both sides of the protocol (devices and server) must install the same.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from typing import Any

Bindings = Mapping[str, tuple[str, ...]]
_LOCK = threading.Lock()


def rebind(bindings: Bindings, functions: Mapping[str, Any]) -> None:
    """Bind ``functions[name]`` as ``name`` in each flwr module of ``bindings`` (idempotent)."""
    with _LOCK:
        for module_name, names in bindings.items():
            module = importlib.import_module(module_name)
            for name in names:
                setattr(module, name, functions[name])


def bound(bindings: Bindings, functions: Mapping[str, Any]) -> bool:
    """Whether every flwr module of ``bindings`` uses ``functions[name]`` under each name."""
    return all(
        getattr(importlib.import_module(module_name), name) is functions[name]
        for module_name, names in bindings.items()
        for name in names
    )
