"""Public names a package imports on first use (PEP 562), so a process that needs one part
(a worker, the CLI) does not load the rest; ``zmqruntime`` and ``zmqruntime.execution`` use it."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, MutableMapping, Sequence


def lazy_names(namespace: MutableMapping[str, Any], where: Mapping[str, str], public: Sequence[str]
               ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` for a package whose ``globals()`` is ``namespace``:
    ``where`` maps each lazy name to its (relative) module; a name is imported once, then cached."""
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value  # once: later lookups are plain attribute reads
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__
