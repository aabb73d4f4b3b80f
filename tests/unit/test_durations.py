import pytest

from runbook_operator.domain.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("2m5s", 125)],
)
def test_parses_flux_style_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5 s", "-1s", "1d", "s", "1.5s", "5m junk"])
def test_rejects_malformed_durations_naming_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [(0.25, "250ms"), (30, "30s"), (90, "1m30s"), (3600, "1h"), (0, "0ms")])
def test_formats_durations(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
