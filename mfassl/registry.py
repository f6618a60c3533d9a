"""A small name -> factory registry, used for everything users select by name.

Backbones (:data:`mfassl.backbones.BACKBONES`), base objectives (:data:`mfassl.objectives.OBJECTIVES`)
and the axis estimators of the sibling packages each keep one :class:`Registry`.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Maps lower-case names to factories.

    Args:
        kind: what the registry holds, used in error messages (e.g. ``"backbone"``).

    Example::

        >>> R = Registry("thing")
        >>> @R.register("plain")
        ... def make_plain(x=1): return x
        >>> R.create("plain", x=2)
        2
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str, factory: Callable[..., T] | None = None) -> Callable:
        """Register ``factory`` under ``name``; usable as a decorator."""
        key = name.lower()

        def add(fn: Callable[..., T]) -> Callable[..., T]:
            if key in self._items and self._items[key] is not fn:
                raise KeyError(f"{self.kind} '{name}' is already registered.")
            self._items[key] = fn
            return fn

        return add(factory) if factory is not None else add

    def get(self, name: str) -> Callable[..., T]:
        key = str(name).lower()
        if key not in self._items:
            raise KeyError(f"unknown {self.kind} '{name}'; choose one of {sorted(self._items)}.")
        return self._items[key]

    def create(self, name: str, **kwargs: Any) -> T:
        """Build the item registered under ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
