"""A frozen dataclass that is also a JAX pytree, with explicit data and meta (static) fields."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import TypeVar

import jax

T = TypeVar("T")


def pytree_dataclass(meta: Iterable[str] = ()) -> Callable[[type[T]], type[T]]:
    """Decorate a class as a frozen dataclass registered with ``jax.tree_util.register_dataclass``.

    ``meta`` names the static fields (hashable, part of the tree structure); every other field is a leaf
    or subtree. Adding a field never silently shifts positional children.
    """
    meta = tuple(meta)

    def wrap(cls: type[T]) -> type[T]:
        dc = dataclasses.dataclass(frozen=True)(cls)
        names = [f.name for f in dataclasses.fields(dc)]
        data = [n for n in names if n not in meta]
        unknown = set(meta) - set(names)
        if unknown:
            raise TypeError(f"{cls.__name__}: meta fields {sorted(unknown)} are not dataclass fields")
        return jax.tree_util.register_dataclass(dc, data_fields=data, meta_fields=list(meta))

    return wrap
