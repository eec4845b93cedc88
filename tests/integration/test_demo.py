"""``tidings demo``: from an empty database to a delivered, personalised campaign in the outbox."""

from __future__ import annotations

import email
import email.policy
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.integration.test_cli import Invoke, _env, _runner
from tidings.config import Settings
from tidings.db.models import Campaign, Contact, Tenant, Throttle
from tidings.runtime import Runtime


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    """The demo configures process-wide logging, as an entry point should; undo it for the suite."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_demo_delivers_a_personalised_campaign_to_the_outbox_and_can_run_again(
    settings: Settings, runtime: Runtime
) -> None:
    cli: Invoke = _runner(_env(settings))
    first = cli("demo", "--contacts", "50", "--rate", "200")
    assert first.exit_code == 0, first.output
    assert "done: 50 sent, 0 failed" in first.stdout
    key = next(line for line in first.stdout.splitlines() if line.startswith("td_"))
    outbox = Path(settings.resolved_transport_url().removeprefix("outbox://")) / "new"
    assert f"messages:  {outbox}" in first.stdout
    assert "dashboard: http://tidings.test/" in first.stdout

    files = sorted(outbox.iterdir())
    assert len(files) == 50
    mail = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert str(mail["To"]).startswith("demo-") and str(mail["To"]).endswith("@example.com")
    assert mail["Subject"].startswith("Welcome aboard, ") and "{{" not in mail["Subject"]
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "plan is ready for the" in html and "{{" not in html

    second = cli("demo", "--contacts", "50", "--rate", "200")
    assert second.exit_code == 0, second.output
    assert "done: 50 sent" in second.stdout
    assert key not in second.stdout  # a fresh key each run; the first one is not shown again
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Tenant)) == 1
        assert session.scalar(select(func.count()).select_from(Contact)) == 50
        statuses = session.scalars(select(Campaign.status)).all()
        assert statuses == ["completed", "completed"]
        throttle = session.scalar(select(Throttle))
        assert throttle is not None and (throttle.enabled, throttle.per_second) == (True, 200)
    assert len(list(outbox.iterdir())) == 100


def test_demo_refuses_bad_options_without_touching_the_database(
    settings: Settings, runtime: Runtime
) -> None:
    cli: Invoke = _runner(_env(settings))
    assert cli("demo", "--contacts", "0").exit_code == 2
    assert cli("demo", "--rate", "many").exit_code == 2
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Tenant)) == 0
