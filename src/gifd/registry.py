"""A name -> factory registry, filled by decorators (one line to add a component)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from gifd.errors import GifdError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories of one kind of component (victims, priors, attacks, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: register `factory` under `name`."""

        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = factory
            return factory

        return decorate

    def unregister(self, name: str) -> None:
        """Remove `name` (a plug-in's or a test's registration; a missing name is a KeyError)."""
        del self._factories[name]

    def get(self, name: str) -> Callable[..., T]:
        """The factory called `name`; an unknown name is a GifdError listing the known ones."""
        if name not in self._factories:
            close = difflib.get_close_matches(name, self._factories, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise GifdError(
                f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(self.names())}."
            )
        return self._factories[name]

    def create(self, name: str, *args: object, **kwargs: object) -> T:
        """Build the component called `name`."""
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._factories)

    def in_order(self) -> list[str]:
        """The names in registration order (for help texts that list them as their authors did)."""
        return list(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
