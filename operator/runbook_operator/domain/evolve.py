"""``evolve``: ``dataclasses.replace`` for the domain's frozen dataclasses, five times cheaper.

``replace`` calls the class's ``__init__`` with every field, which sets each one through
``object.__setattr__``; the core makes a new ``Status`` or ``StepRecord`` a few hundred times
per incident, and a replay does it for thousands of incidents. ``evolve`` copies the instance's
``__dict__`` and applies the changes. That is only right for dataclasses without
``__post_init__`` or ``__slots__`` (none in the domain has either; ``evolve`` checks), and the
names it is given are checked against the fields, as ``replace`` checks them (a name that is no
field would add a key to the copy's ``__dict__``). For the type
checker it *is* ``replace``, so mypy checks every call's names and types as it does there.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, TypeVar

T = TypeVar("T")

if TYPE_CHECKING:
    from dataclasses import replace as evolve
else:
    _CHECKED: set[type] = set()

    def _check(cls: type) -> None:
        if hasattr(cls, "__post_init__") or hasattr(cls, "__slots__") or not dataclasses.is_dataclass(cls):
            raise TypeError(f"evolve: {cls.__name__} needs dataclasses.replace (post-init, slots, or no dataclass)")
        _CHECKED.add(cls)

    def evolve(obj: T, /, **changes: Any) -> T:
        cls = type(obj)
        if cls not in _CHECKED:
            _check(cls)
        new = object.__new__(cls)
        state = new.__dict__
        state.update(obj.__dict__)
        size = len(state)
        state.update(changes)
        if len(state) != size:  # a name that is no field (every field is in an instance's __dict__)
            unknown = sorted(changes.keys() - {f.name for f in dataclasses.fields(cls)})
            raise TypeError(f"evolve: {cls.__name__} has no field {', '.join(unknown)}")
        return new


__all__ = ["evolve"]
