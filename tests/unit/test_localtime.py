"""The ``localtime`` filter and ``event_at``: times in the recipient's zone and language (Babel)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.unit.test_rendering import make_renderer
from tidings.errors import RenderError
from tidings.rendering import Recipient, Renderer
from tidings.rendering.localtime import LOCAL_KEY, MAX_PATTERN_LENGTH
from tidings.rendering.renderer import with_event

#: 2027-03-01T15:00:00+01:00, the issue's example, as Tidings stores it.
EVENT = datetime(2027, 3, 1, 14, 0, tzinfo=UTC)
BERLIN_DE = Recipient(email="anna@example.de", timezone="Europe/Berlin", locale="de")
NEW_YORK_EN = Recipient(email="ned@example.com", timezone="America/New_York", locale="en")


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return make_renderer()


def shown(
    renderer: Renderer,
    text: str,
    recipient: Recipient,
    data: dict[str, Any] | None = None,
    event_at: datetime | None = EVENT,
) -> str:
    compiled = renderer.compile(subject="s", html=None, text=text)
    content = renderer.render(
        compiled,
        tenant_id=1,
        recipient=recipient,
        data=with_event(data or {}, event_at),
        category=None,
    )
    return content.text


def test_a_german_contact_in_berlin_reads_the_issues_example_exactly(renderer: Renderer) -> None:
    text = '{{ event_at|localtime("EEEE d MMMM, HH:mm") }}'
    assert shown(renderer, text, BERLIN_DE) == "Montag 1 März, 15:00"


def test_an_english_contact_in_new_york_reads_it_in_english_at_new_york_time(
    renderer: Renderer,
) -> None:
    text = '{{ event_at|localtime("EEEE d MMMM, HH:mm") }}|{{ event_at|localtime }}'
    # Without a pattern: the locale's medium layout (CLDR puts a narrow space before AM).
    assert (
        shown(renderer, text, NEW_YORK_EN) == "Monday 1 March, 09:00|Mar 1, 2027, 9:00:00\u202fAM"
    )


def test_no_zone_means_utc_and_no_locale_means_english(renderer: Renderer) -> None:
    text = '{{ event_at|localtime("EEEE d MMMM, HH:mm zzzz") }}'
    assert shown(renderer, text, Recipient(email="x@example.com")) == (
        "Monday 1 March, 14:00 Coordinated Universal Time"
    )
    german_without_zone = Recipient(email="x@example.de", locale="de")
    assert shown(renderer, text, german_without_zone) == (
        "Montag 1 März, 14:00 Koordinierte Weltzeit"
    )


@pytest.mark.parametrize(
    ("zone", "utc", "local"),
    [
        # Europe switches at 01:00 UTC on the last Sunday of March: 02:00 CET never happens.
        ("Europe/Berlin", datetime(2027, 3, 28, 0, 59, tzinfo=UTC), "28.03.2027 01:59 MEZ"),
        ("Europe/Berlin", datetime(2027, 3, 28, 1, 0, tzinfo=UTC), "28.03.2027 03:00 MESZ"),
        # ... and back at 01:00 UTC on the last Sunday of October: 02:30 happens twice.
        ("Europe/Berlin", datetime(2027, 10, 31, 0, 30, tzinfo=UTC), "31.10.2027 02:30 MESZ"),
        ("Europe/Berlin", datetime(2027, 10, 31, 1, 30, tzinfo=UTC), "31.10.2027 02:30 MEZ"),
        # Lord Howe Island moves by half an hour.
        ("Australia/Lord_Howe", datetime(2027, 4, 3, 14, 59, tzinfo=UTC), "04.04.2027 01:59 +1100"),
        ("Australia/Lord_Howe", datetime(2027, 4, 3, 15, 0, tzinfo=UTC), "04.04.2027 01:30 +1030"),
    ],
)
def test_daylight_saving_switches_show_the_local_time_of_that_instant(
    renderer: Renderer, zone: str, utc: datetime, local: str
) -> None:
    recipient = Recipient(email="x@example.de", timezone=zone, locale="de")
    assert shown(
        renderer, '{{ event_at|localtime("dd.MM.y HH:mm z") }}', recipient, event_at=utc
    ) == (local)


def test_iso_strings_from_json_data_are_times_too(renderer: Renderer) -> None:
    text = '{{ start|localtime("HH:mm") }} {{ naive|localtime("HH:mm") }} [{{ none|localtime }}]'
    data = {"start": "2027-03-01T15:00:00+01:00", "naive": "2027-03-01T15:00:00", "none": None}
    # A time without a zone is UTC, as every time Tidings stores; a missing one prints nothing.
    assert shown(renderer, text, BERLIN_DE, data=data, event_at=None) == "15:00 16:00 []"


def test_a_reminders_event_wins_over_an_event_at_in_the_data(renderer: Renderer) -> None:
    data = {"event_at": "2030-01-01T00:00:00Z"}
    text = '{{ event_at|localtime("d MMMM y") }} {{ data.event_at|localtime("y") }}'
    assert shown(renderer, text, BERLIN_DE, data=data) == "1 März 2027 2027"


def test_the_data_cannot_pose_as_the_recipients_zone_or_locale(renderer: Renderer) -> None:
    data = {LOCAL_KEY: ("Asia/Tokyo", "ja")}
    assert shown(renderer, '{{ event_at|localtime("HH:mm") }}', BERLIN_DE, data=data) == "15:00"


def test_odd_locales_and_zones_fall_back_instead_of_failing(renderer: Renderer) -> None:
    text = '{{ event_at|localtime("EEEE HH:mm") }}'
    assert shown(renderer, text, Recipient(email="x@e.br", locale="pt-BR")) == "segunda-feira 14:00"
    assert shown(renderer, text, Recipient(email="x@e.ch", locale="de-XX")) == "Montag 14:00"
    assert shown(renderer, text, Recipient(email="x@e.zz", locale="zz-ZZ")) == "Monday 14:00"
    unknown_zone = Recipient(email="x@e.zz", timezone="Mars/Olympus_Mons")
    assert shown(renderer, text, unknown_zone) == "Monday 14:00"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{{ event_at|localtime("EEEEEEEEE") }}', "bad pattern 'EEEEEEEEE'"),
        (
            "{{ event_at|localtime('" + "y" * (MAX_PATTERN_LENGTH + 1) + "') }}",
            f"longer than {MAX_PATTERN_LENGTH} characters",
        ),
        ("{{ event_at|localtime(7) }}", "the format must be a pattern"),
        ("{{ 'soon'|localtime }}", "'soon' is not an ISO 8601 time"),
        ("{{ 42|localtime }}", "needs a time (a datetime or an ISO 8601 string), not int"),
        ("{{ missing|localtime }}", "'missing' is undefined"),
        ("{{ '0001-01-01T00:00:00+00:00'|localtime }}", "the time is out of range"),
    ],
)
def test_a_bad_pattern_or_value_is_a_render_error_naming_it(
    renderer: Renderer, text: str, problem: str
) -> None:
    with pytest.raises(RenderError) as failed:
        shown(renderer, "line one\n" + text, NEW_YORK_EN)
    assert failed.value.field == "text"
    assert problem in failed.value.message and "(line 2)" in failed.value.message


def test_the_output_is_escaped_in_html(renderer: Renderer) -> None:
    compiled = renderer.compile(
        subject="s", html="<p>{{ event_at|localtime(\"'<b>' HH:mm\") }}</p>", text="t"
    )
    content = renderer.render(
        compiled, tenant_id=1, recipient=BERLIN_DE, data=with_event({}, EVENT), category=None
    )
    assert content.html == "<p>&lt;b&gt; 15:00</p>"
