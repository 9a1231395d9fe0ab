"""satchel.durations.parse_duration: the duration syntax of satchelctl and satcheld flags."""

from __future__ import annotations

from datetime import timedelta

import pytest

from satchel.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", timedelta(milliseconds=500)),
        ("10s", timedelta(seconds=10)),
        ("5m", timedelta(minutes=5)),
        ("1h", timedelta(hours=1)),
        ("7d", timedelta(days=7)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d2h3m4s5ms", timedelta(days=1, hours=2, minutes=3, seconds=4, milliseconds=5)),
        ("1.5h", timedelta(minutes=90)),
        ("0s", timedelta(0)),
        ("30m1h", timedelta(minutes=90)),  # any order; parts add up
    ],
)
def test_parses(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "10",
        "s",
        "soon",
        "1 h",
        " 1h",
        "1h ",
        "-1h",
        "+1h",
        "1.h",
        ".5h",
        "1H",
        "1w",
        "1hx",
        "1y2h",
        "9" * 400 + "d",
    ],
)
def test_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
