"""``evolve``: what ``dataclasses.replace`` does for the domain's frozen dataclasses, cheaper."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from runbook_operator.domain.evolve import evolve
from runbook_operator.domain.status import Phase, Status, StepRecord


def test_it_makes_what_replace_makes() -> None:
    status = Status(phase=Phase.DIAGNOSING, steps=(StepRecord("a", "Diagnose", "http.check", 1, "Running"),))
    for changes in ({}, {"phase": Phase.RESOLVED}, {"currentStep": "a", "attempts": 2}):
        made = evolve(status, **changes)  # type: ignore[arg-type]
        assert made == dataclasses.replace(status, **changes)  # type: ignore[arg-type]
        assert made is not status and type(made) is Status
    assert status.phase == Phase.DIAGNOSING  # the original is untouched


def test_a_name_that_is_no_field_is_refused_as_replace_refuses_it() -> None:
    with pytest.raises(TypeError, match="Status has no field phse"):
        evolve(Status(), phse=Phase.RESOLVED)  # type: ignore[call-arg]


def test_a_class_that_needs_its_init_is_refused() -> None:
    @dataclass(frozen=True)
    class Checked:
        value: int
        double: int = field(init=False, default=0)

        def __post_init__(self) -> None:
            object.__setattr__(self, "double", 2 * self.value)

    with pytest.raises(TypeError, match=r"needs dataclasses\.replace"):
        evolve(Checked(1), value=2)

    @dataclass(frozen=True, slots=True)
    class Slotted:
        value: int

    with pytest.raises(TypeError, match=r"needs dataclasses\.replace"):
        evolve(Slotted(1), value=2)
