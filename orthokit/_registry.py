"""A small generic registry with capability metadata, shared by every orthokit family.

Each family (polar methods, optimizers, projection methods, merge methods, ...) owns one
:class:`Registry`. A method registers itself with a decorator that records what it can do;
conformance tests iterate over ``registry.names()`` so adding a method is one new file.

Example:
    >>> from orthokit._registry import Registry
    >>> METHODS = Registry("merge method")
    >>> @METHODS.register("mean", handles_lora=False)
    ... def mean(*tensors):
    ...     return sum(tensors) / len(tensors)
    >>> METHODS.get("mean") is mean
    True
    >>> METHODS.capabilities("mean")["handles_lora"]
    False
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "RegistryEntry"]


@dataclass(frozen=True)
class RegistryEntry(Generic[T]):
    """One registered object: its canonical name, the object, aliases and capability metadata."""

    name: str
    obj: T
    aliases: tuple[str, ...] = ()
    capabilities: Mapping[str, Any] = field(default_factory=dict)

    @property
    def doc(self) -> str:
        """First line of the object's docstring (empty if none)."""
        d = getattr(self.obj, "__doc__", None) or ""
        return d.strip().splitlines()[0] if d.strip() else ""


class Registry(Generic[T]):
    """Name → object registry with capabilities and helpful lookup errors.

    Args:
        kind: human-readable noun used in error messages (e.g. ``"optimizer"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, RegistryEntry[T]] = {}
        self._aliases: dict[str, str] = {}

    @staticmethod
    def _norm(name: str) -> str:
        return name.strip().lower().replace("-", "_")

    def register(
        self, name: str, *, aliases: tuple[str, ...] | list[str] = (), **capabilities: Any
    ) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (and ``aliases``) with ``capabilities``."""

        def deco(obj: T) -> T:
            self.add(name, obj, aliases=aliases, **capabilities)
            return obj

        return deco

    def add(
        self, name: str, obj: T, *, aliases: tuple[str, ...] | list[str] = (), **capabilities: Any
    ) -> None:
        """Register ``obj`` directly (non-decorator form). Duplicate names raise ``ValueError``."""
        key = self._norm(name)
        keys = [key, *(self._norm(a) for a in aliases)]
        for k in keys:
            if k in self._entries or k in self._aliases:
                raise ValueError(f"{self.kind} {k!r} is already registered")
        self._entries[key] = RegistryEntry(
            key, obj, tuple(self._norm(a) for a in aliases), MappingProxyType(dict(capabilities))
        )
        for a in keys[1:]:
            self._aliases[a] = key

    def _resolve(self, name: str) -> str:
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a string, got {type(name).__name__}")
        key = self._norm(name)
        key = self._aliases.get(key, key)
        if key not in self._entries:
            valid = self.names()
            close = difflib.get_close_matches(key, valid + list(self._aliases), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"unknown {self.kind} {name!r}.{hint} Valid names: {', '.join(valid)}")
        return key

    def get(self, name: str) -> T:
        """Return the object registered as ``name`` (or an alias); ``ValueError`` listing valid names otherwise."""
        return self._entries[self._resolve(name)].obj

    def entry(self, name: str) -> RegistryEntry[T]:
        """Return the full :class:`RegistryEntry` for ``name``."""
        return self._entries[self._resolve(name)]

    def capabilities(self, name: str) -> Mapping[str, Any]:
        """Capability metadata recorded at registration."""
        return self.entry(name).capabilities

    def names(self, **where: Any) -> list[str]:
        """Sorted canonical names, optionally filtered by capability values (``names(batched=True)``)."""
        out = []
        for k, e in self._entries.items():
            if all(e.capabilities.get(c) == v for c, v in where.items()):
                out.append(k)
        return sorted(out)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        k = self._norm(name)
        return k in self._entries or k in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"
