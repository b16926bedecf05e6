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


class FlatState:
    """A pytree flattened once: ``leaves`` (a tuple of arrays) plus the ``treedef`` to rebuild it.

    Passing a model's nnx ``State`` to a jitted step flattens it on every call: one Python callback per
    ``Variable`` (~850 for the 27B model), about a millisecond of host time per step. A ``FlatState`` flattens
    with one callback returning the stored tuple; the step rebuilds the original tree inside ``jit`` with
    :meth:`unflatten` (free at trace time). Build it once per loaded model with :meth:`of`.
    """

    __slots__ = ("leaves", "treedef")

    def __init__(self, leaves: tuple, treedef: jax.tree_util.PyTreeDef):
        self.leaves = tuple(leaves)
        self.treedef = treedef

    @classmethod
    def of(cls, tree) -> FlatState:
        if isinstance(tree, FlatState):
            return tree
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        return cls(tuple(leaves), treedef)

    def unflatten(self):
        return jax.tree_util.tree_unflatten(self.treedef, self.leaves)


def unflatten_state(state):
    """``state`` itself, or the tree a :class:`FlatState` stands for."""
    return state.unflatten() if isinstance(state, FlatState) else state


jax.tree_util.register_pytree_node(
    FlatState, lambda s: (s.leaves, s.treedef), lambda treedef, leaves: FlatState(tuple(leaves), treedef)
)
