"""Return dates in out-of-office replies, in the recipient's timezone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from campaign_worker.domain.return_dates import parse_return_date, resume_at

# Wednesday 25 November 2026, 14:00 UTC = 09:00 in New York.
RECEIVED = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "local_day"),
    [
        ("I am out of the office until Monday", "2026-11-30"),
        ("Back on 3 December.", "2026-12-03"),
        ("Away until December 3rd, 2026", "2026-12-03"),
        ("OOO - back 2026-12-07", "2026-12-07"),
        ("Abwesend bis 7.12.2026", "2026-12-07"),
        ("On vacation, back tomorrow", "2026-11-26"),
        ("Out of office next week", "2026-11-30"),
        ("Out since 20 Nov, back on Friday", "2026-11-27"),  # the date after "back" wins
        ("Out of office until 5 January", "2027-01-05"),  # no year: the next one
        ("Back on Wednesday", "2026-12-02"),  # said on a Wednesday: next week's
    ],
)
def test_return_day_is_found_and_resumes_at_nine_local(text: str, local_day: str) -> None:
    found = parse_return_date(text, RECEIVED, "America/New_York")
    assert found is not None
    local = found.astimezone(__import__("zoneinfo").ZoneInfo("America/New_York"))
    assert local.date().isoformat() == local_day
    assert (local.hour, local.minute) == (9, 0)


def test_the_recipient_timezone_decides_which_day_today_is() -> None:
    late = datetime(2026, 11, 25, 23, 30, tzinfo=UTC)  # already Thursday in Tokyo
    tokyo = parse_return_date("back tomorrow", late, "Asia/Tokyo")
    new_york = parse_return_date("back tomorrow", late, "America/New_York")
    assert tokyo == datetime(2026, 11, 27, 0, 0, tzinfo=UTC)  # Fri 09:00 JST
    assert new_york == datetime(2026, 11, 26, 14, 0, tzinfo=UTC)  # Thu 09:00 EST


@pytest.mark.parametrize("text", ["I am away", "Out of office", "call me on 31 February"])
def test_no_date_means_none(text: str) -> None:
    assert parse_return_date(text, RECEIVED, "UTC") is None


def test_resume_falls_back_to_the_pause_and_is_capped() -> None:
    pause, cap = timedelta(days=3), timedelta(days=30)
    assert resume_at("Out of office", RECEIVED, "UTC", default_pause=pause, max_pause=cap) == (
        RECEIVED + pause
    )
    far = resume_at("back on 1 June 2027", RECEIVED, "UTC", default_pause=pause, max_pause=cap)
    assert far == RECEIVED + cap


@pytest.mark.parametrize(
    ("text", "local_day"),
    [
        ("Ich bin bis zum 10. Januar nicht im Büro.", "2027-01-10"),
        ("Abwesend, ab Montag wieder erreichbar.", "2026-11-30"),
        ("Vom 20. November bis 4. Dezember im Urlaub.", "2026-12-04"),
        ("Je suis absent jusqu'au 5 janvier.", "2027-01-05"),
        ("En congés, de retour le 1er décembre.", "2026-12-01"),
        ("Absente aujourd'hui, je vous réponds demain.", "2026-11-26"),
        ("Estoy de vacaciones hasta el 7 de enero.", "2027-01-07"),
        ("Fuera de la oficina, vuelvo el viernes.", "2026-11-27"),
        ("De vacaciones, regreso el 3/12/2026.", "2026-12-03"),
        ("Ausente hasta el miércoles.", "2026-12-02"),
    ],
)
def test_return_days_in_german_french_and_spanish(text: str, local_day: str) -> None:
    found = parse_return_date(text, RECEIVED, "UTC")
    assert found is not None, text
    assert found.date().isoformat() == local_day
