"""A module's ``nn.Linear`` layers found by name and swapped for other modules (the int8
and bfloat16 copies of a text tower)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def linear_layer_names(module: nn.Module, *, skip: tuple[str, ...] = ()) -> list[str]:
    """Names of ``module``'s ``nn.Linear`` layers outside the submodules named in ``skip``;
    a ValueError if there is none."""
    names = [
        name
        for name, child in module.named_modules()
        if isinstance(child, nn.Linear) and not any(_within(name, s) for s in skip)
    ]
    if not names:
        raise ValueError("the module has no nn.Linear layer to convert")
    return names


def swap_layer(root: nn.Module, name: str, make: Callable[[nn.Module], nn.Module]) -> None:
    """Replace ``root``'s submodule ``name`` by ``make(submodule)``."""
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name)
    setattr(parent, attr, make(getattr(parent, attr)))


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")
