"""The ``tidings`` command line through Typer's runner, against a real database (both dialects).

Every invocation must end with a message and an exit code, never a traceback: 0 for success, 1 for
a refusal (unknown tenant, bad file, wrong campaign state, unreachable database), 2 for bad usage.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import func, select
from typer.main import get_command
from typer.testing import CliRunner, Result

from tests.acceptance.conftest import WorkerThread, wait_until
from tests.conftest import TEST_SECRET, TenantKeys
from tidings.app import create_app
from tidings.cli.app import app
from tidings.config import Settings
from tidings.db.engine import transaction
from tidings.db.models import ApiKey, Campaign, Contact, Message
from tidings.queue import fanout
from tidings.runtime import Runtime
from tidings.services import templates

Invoke = Callable[..., Result]


def _env(settings: Settings) -> dict[str, str | None]:
    return {
        "TIDINGS_DATABASE_URL": settings.database_url,
        "TIDINGS_DATA_DIR": str(settings.data_dir),
        "TIDINGS_SECRET_KEY": TEST_SECRET,
        "TIDINGS_TRANSPORT_URL": settings.transport_url,
        "TIDINGS_PUBLIC_URL": settings.public_url,
        "TIDINGS_URL": None,
        "TIDINGS_API_KEY": None,
        "COLUMNS": "200",  # Rich tables wide enough to assert on whole lines
    }


def _runner(env: dict[str, str | None]) -> Invoke:
    runner = CliRunner()

    def invoke(*args: str, **extra_env: str | None) -> Result:
        result = runner.invoke(app, list(args), env={**env, **extra_env})
        assert "Traceback" not in result.output, result.output
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    return invoke


@pytest.fixture
def cli(settings: Settings, runtime: Runtime) -> Invoke:
    """``tidings …`` on the test's database; ``runtime`` has migrated it (PostgreSQL needs that)."""
    return _runner(_env(settings))


def _template(runtime: Runtime, tenant_id: int) -> int:
    with transaction(runtime.sessions) as session:
        template = templates.create_template(
            session=session,
            renderer=runtime.renderer,
            tenant_id=tenant_id,
            name="reminder",
            subject="Reminder for {{ first_name }}",
            html="<p>{{ personal_message }} by {{ deadline }}</p>",
            text=None,
            category=None,
            now=datetime.now(UTC),
        )
        return template.id


def _import_people(cli: Invoke, tmp_path: Path, count: int, list_name: str = "staff") -> None:
    people = tmp_path / "people.csv"
    people.write_text(
        "email,first_name\n" + "".join(f"p{n}@example.edu,P{n}\n" for n in range(count))
    )
    result = cli("contacts", "import", str(people), "--list", list_name, "--tenant", "acme",
                 "--create-list")  # fmt: skip
    assert result.exit_code == 0, result.output


def _campaign(runtime: Runtime, campaign_id: int) -> Campaign:
    with runtime.sessions() as session:
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None
        return campaign


# -- help and usage ------------------------------------------------------------------------------


def _command_paths(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from _command_paths(sub, (*path, name))


def test_every_command_answers_help(tmp_path: Path) -> None:
    invoke = _runner({"TIDINGS_DATA_DIR": str(tmp_path), "COLUMNS": "200"})
    paths = list(_command_paths(get_command(app)))
    expected = {("campaign", "status"), ("contacts", "import"), ("send",), ("queue",), ("demo",)}
    assert expected <= set(paths)
    for path in paths:
        result = invoke(*path, "--help")
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ("campaign", "status", "not-a-number", "--tenant", "acme"),
        ("campaign", "status", "0", "--tenant", "acme"),
        ("campaign", "create", "--tenant", "acme"),
        ("campaign", "create", "--tenant", "acme", "--name", "x", "--template", "1", "--data", "x"),
        ("campaign", "create", "--tenant", "acme", "--name", "x", "--template", "1",
         "--schedule", "2030-01-01T09:00"),
        ("key", "create", "--tenant", "acme", "--name", "ci", "--role", "owner"),
        ("contacts", "import", "/no/such/file.csv", "--list", "x", "--tenant", "acme"),
        ("send", "--to", "a@example.com", "--subject", "s", "--priority", "12", "--tenant", "acme"),
        ("campaign", "pause", "1"),
        ("campaign", "pause", "1", "--url", "http://127.0.0.1:9"),
        ("campaign", "pause", "1", "--url", "ftp://x", "--key", "k"),
        ("no-such-command",),
    ],
)  # fmt: skip
def test_bad_arguments_are_refused_with_usage_errors(tmp_path: Path, args: tuple[str, ...]) -> None:
    invoke = _runner({"TIDINGS_DATA_DIR": str(tmp_path), "COLUMNS": "200"})
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert result.output.strip()


def test_an_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    invoke = _runner(
        {
            "TIDINGS_DATA_DIR": str(tmp_path),
            "TIDINGS_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
        }
    )
    result = invoke("tenant", "list")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot use the database at postgresql+psycopg://")
    result = invoke("queue", TIDINGS_DATABASE_URL="mysql://localhost/x")
    assert result.exit_code == 1
    assert "TIDINGS_DATABASE_URL must start with" in result.stderr


def test_a_database_behind_its_migrations_is_refused_with_the_fix(
    tmp_path: Path, pg_database_url: str
) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(
        pg_database_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT"
    )
    name = f"tidings_cli_empty_{int(time.time() * 1000)}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = pg_database_url.rsplit("/", 1)[0] + f"/{name}"
        result = _runner({"TIDINGS_DATA_DIR": str(tmp_path), "TIDINGS_DATABASE_URL": url})(
            "tenant", "list"
        )
        assert result.exit_code == 1
        assert "run `tidings db upgrade`" in result.stderr
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# -- tenants and keys ----------------------------------------------------------------------------


def test_tenants_and_keys_are_managed_and_a_missing_tenant_is_named(
    cli: Invoke, runtime: Runtime
) -> None:
    created = cli("tenant", "create", "acme")
    assert created.exit_code == 0, created.output
    admin_key = created.stdout.strip().splitlines()[-1]
    assert admin_key.startswith("td_")
    assert "acme" in cli("tenant", "list").stdout

    duplicate = cli("tenant", "create", "acme")
    assert duplicate.exit_code == 1
    assert "already exists" in duplicate.stderr

    issued = cli("key", "create", "--tenant", "acme", "--name", "ci", "--role", "viewer")
    assert issued.exit_code == 0 and issued.stdout.strip().startswith("td_")
    listing = cli("key", "list", "--tenant", "acme").stdout
    assert "ci" in listing and "viewer" in listing
    with runtime.sessions() as session:
        key_id = session.scalar(select(ApiKey.id).where(ApiKey.name == "ci"))
    assert cli("key", "revoke", str(key_id), "--tenant", "acme").exit_code == 0
    with runtime.sessions() as session:
        assert session.scalar(select(ApiKey.revoked_at).where(ApiKey.id == key_id)) is not None

    missing = cli("key", "list", "--tenant", "initech")
    assert (missing.exit_code, missing.stderr.strip()) == (1, "error: no tenant named 'initech'")
    unknown = cli("key", "revoke", "999999", "--tenant", "acme")
    assert unknown.exit_code == 1 and "no such API key" in unknown.stderr


# -- contacts import -----------------------------------------------------------------------------


def test_import_reports_created_updated_and_skipped_lines(
    cli: Invoke, acme: TenantKeys, runtime: Runtime, tmp_path: Path
) -> None:
    first = tmp_path / "first.csv"
    first.write_text(
        "email,first_name,city\n"
        "ann@example.edu,Ann,Oslo\n"
        "not-an-address,Bob,Lima\n"
        "cho@example.edu,Cho,Accra\n"
        "ann@example.edu,Ann again,Oslo\n"
    )
    no_list = cli("contacts", "import", str(first), "--list", "staff", "--tenant", "acme")
    assert no_list.exit_code == 1 and "--create-list" in no_list.stderr

    result = cli("contacts", "import", str(first), "--list", "staff", "--tenant", "acme",
                 "--create-list")  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "created list 'staff'" in out
    assert _report(out) == {
        "rows": 4,
        "created": 2,
        "updated": 0,
        "added to staff": 2,
        "skipped": 2,
    }
    assert "│ 3    │ email:" in out
    assert "│ 5    │ duplicate of line 2" in out

    second = tmp_path / "second.jsonl"
    second.write_text('{"email": "ann@example.edu", "first_name": "Annie"}\n'
                      '{"email": "dee@example.edu"}\n')  # fmt: skip
    again = cli("contacts", "import", str(second), "--list", "staff", "--tenant", "acme")
    assert again.exit_code == 0, again.output
    assert _report(again.stdout) == {
        "rows": 2, "created": 1, "updated": 1, "added to staff": 1, "skipped": 0,
    }  # fmt: skip
    with runtime.sessions() as session:
        names = dict(session.execute(select(Contact.email, Contact.first_name)).all())
    assert names == {"ann@example.edu": "Annie", "cho@example.edu": "Cho", "dee@example.edu": None}


def _report(out: str) -> dict[str, int]:
    figures = {}
    for line in out.splitlines():
        label, _, value = line.strip().rpartition(" ")
        figure = value.replace(",", "")
        if (
            label.strip() in {"rows", "created", "updated", "added to staff", "skipped"}
            and figure.isdigit()
        ):
            figures[label.strip()] = int(figure)
    return figures


def test_import_lists_only_the_first_skipped_lines_and_refuses_an_unreadable_file(
    cli: Invoke, acme: TenantKeys, runtime: Runtime, tmp_path: Path
) -> None:
    bad_rows = tmp_path / "bad.csv"
    bad_rows.write_text("email\n" + "".join(f"nobody{n}\n" for n in range(30)) + "ok@example.edu\n")
    result = cli("contacts", "import", str(bad_rows), "--list", "staff", "--tenant", "acme",
                 "--create-list", "--show-skipped", "5")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert _report(result.stdout)["skipped"] == 30
    assert "… and 25 more skipped" in result.stdout

    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes("email\nzed@example.edu\n".encode("utf-16"))
    refused = cli("contacts", "import", str(utf16), "--list", "staff", "--tenant", "acme")
    assert refused.exit_code == 1
    assert "UTF-16" in refused.stderr
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Contact)) == 1  # nothing from it


# -- campaigns -----------------------------------------------------------------------------------


def test_a_campaign_is_created_started_paused_resumed_and_cancelled(
    cli: Invoke, acme: TenantKeys, runtime: Runtime, tmp_path: Path
) -> None:
    _import_people(cli, tmp_path, 3)
    template_id = _template(runtime, acme.tenant_id)
    created = cli("campaign", "create", "--tenant", "acme", "--name", "Term reminder",
                  "--template", str(template_id), "--list", "staff",
                  "--data", "deadline=Friday", "--data", 'personal_message:="Hello"',
                  "--data", "rooms:=[1, 2]")  # fmt: skip
    assert created.exit_code == 0, created.output
    campaign_id = int(created.stdout.split()[1])
    draft = _campaign(runtime, campaign_id)
    assert draft.status == "draft"
    assert draft.data == {"deadline": "Friday", "personal_message": "Hello", "rooms": [1, 2]}

    draft_status = cli("campaign", "status", str(campaign_id), "--tenant", "acme", "--follow")
    assert draft_status.exit_code == 0 and "draft" in draft_status.stdout  # returns at once

    steps = [
        ("start", "running"),
        ("pause", "paused"),
        ("resume", "running"),
        ("cancel", "cancelled"),
    ]
    for action, status in steps:
        result = cli("campaign", action, str(campaign_id), "--tenant", "acme")
        assert result.exit_code == 0, result.output
        assert f"now {status}, 3 recipients" in result.stdout
        assert _campaign(runtime, campaign_id).status == status

    refused = cli("campaign", "start", str(campaign_id), "--tenant", "acme")
    assert refused.exit_code == 1
    assert "the campaign is cancelled" in refused.stderr
    other = cli("campaign", "status", str(campaign_id + 100), "--tenant", "acme")
    assert (other.exit_code, other.stderr.strip()) == (1, "error: no such campaign")
    no_list = cli("campaign", "create", "--tenant", "acme", "--name", "x",
                  "--template", str(template_id), "--list", "nope")  # fmt: skip
    assert no_list.exit_code == 1 and "no list named 'nope'" in no_list.stderr


def test_a_preparing_campaign_is_paused_and_resumed_from_the_cli(
    cli: Invoke, acme: TenantKeys, runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "FANOUT_CHUNK", 2)  # the start writes 2 of 3, a worker the last
    _import_people(cli, tmp_path, 3)
    template_id = _template(runtime, acme.tenant_id)
    created = cli("campaign", "create", "--tenant", "acme", "--name", "Big",
                  "--template", str(template_id), "--list", "staff")  # fmt: skip
    campaign_id = created.stdout.split()[1]
    for action, status in (("start", "preparing"), ("pause", "paused"), ("resume", "preparing")):
        result = cli("campaign", action, campaign_id, "--tenant", "acme")
        assert result.exit_code == 0, result.output
        assert f"now {status}, 2 recipients" in result.stdout


def test_a_draft_is_changed_rescheduled_and_deleted_here_and_through_the_api(
    cli: Invoke, acme: TenantKeys, runtime: Runtime, tmp_path: Path
) -> None:
    _import_people(cli, tmp_path, 2)
    template_id = _template(runtime, acme.tenant_id)
    created = cli("campaign", "create", "--tenant", "acme", "--name", "Typo",
                  "--template", str(template_id), "--list", "staff")  # fmt: skip
    campaign_id = str(int(created.stdout.split()[1]))
    later = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    changed = cli("campaign", "update", campaign_id, "--tenant", "acme", "--name", "Fixed",
                  "--schedule", later.isoformat(), "--data", "deadline=Monday")  # fmt: skip
    assert changed.exit_code == 0, changed.output
    assert "now draft" in changed.stdout
    draft = _campaign(runtime, int(campaign_id))
    assert (draft.name, draft.scheduled_at, draft.data) == ("Fixed", later, {"deadline": "Monday"})
    nothing = cli("campaign", "update", campaign_id, "--tenant", "acme")
    assert nothing.exit_code != 0 and "nothing to change" in nothing.stderr
    with serving(runtime) as url:
        remote = {"TIDINGS_URL": url, "TIDINGS_API_KEY": acme.sender}
        assert "now scheduled" in cli("campaign", "start", campaign_id, **remote).stdout
        unscheduled = cli("campaign", "update", campaign_id, "--unschedule", **remote)
        assert unscheduled.exit_code == 0, unscheduled.output
        assert "now draft" in unscheduled.stdout
        bad = cli("campaign", "update", campaign_id, "--name", "a\tb\nc", **remote)
        assert bad.exit_code == 1 and "name" in bad.stderr
        deleted = cli("campaign", "delete", campaign_id, **remote)
        assert deleted.exit_code == 0, deleted.output
        again = cli("campaign", "delete", campaign_id, **remote)
        assert (again.exit_code, again.stderr.strip()) == (1, "error: no such campaign")
    with runtime.sessions() as session:
        assert session.get(Campaign, int(campaign_id)) is None


def test_status_follows_a_campaign_to_the_end_and_then_reports_it_completed(
    cli: Invoke, acme: TenantKeys, runtime: Runtime, tmp_path: Path
) -> None:
    _import_people(cli, tmp_path, 5)
    template_id = _template(runtime, acme.tenant_id)
    created = cli("campaign", "create", "--tenant", "acme", "--name", "Follow me",
                  "--template", str(template_id), "--list", "staff", "--start",
                  "--data", "deadline=Friday", "--data", "personal_message=Hi")  # fmt: skip
    assert created.exit_code == 0, created.output
    campaign_id = int(created.stdout.split()[1])
    worker = WorkerThread(runtime, concurrency=5).start()
    try:
        followed = cli("campaign", "status", str(campaign_id), "--tenant", "acme",
                       "--follow", "--interval", "0.1")  # fmt: skip
    finally:
        worker.stop()
    assert followed.exit_code == 0, followed.output
    assert f"campaign {campaign_id} completed: 5 sent, 0 failed" in followed.stdout

    status = cli("campaign", "status", str(campaign_id), "--tenant", "acme")
    assert status.exit_code == 0, status.output
    lines = _fields(status.stdout)
    assert lines["status"] == "completed"
    assert (lines["recipients"], lines["sent"], lines["failed"], lines["pending"]) == (
        "5",
        "5",
        "0",
        "0",
    )
    assert lines["progress"] == "100.0 %"
    assert "ended" in lines
    listed = cli("campaign", "list", "--tenant", "acme")
    assert "Follow me" in listed.stdout and "completed" in listed.stdout


def _fields(out: str) -> dict[str, str]:
    """The label / value lines of ``campaign status``."""
    pairs = (line.split(None, 1) for line in out.splitlines() if line.strip())
    return {pair[0]: pair[1].strip() for pair in pairs if len(pair) == 2}


# -- send and queue ------------------------------------------------------------------------------


def test_send_queues_one_message_and_queue_shows_it_waiting(
    cli: Invoke, acme: TenantKeys, runtime: Runtime, tmp_path: Path
) -> None:
    body = tmp_path / "body.html"
    body.write_text("<p>Your code is {{ code }}</p>")
    sent = cli("send", "--to", "ann@example.edu", "--subject", "Code {{ code }}",
               "--html", f"@{body}", "--data", "code=4711", "--tenant", "acme",
               "--idempotency-key", "login-1")  # fmt: skip
    assert sent.exit_code == 0, sent.output
    message_id = int(sent.stdout.split()[1])
    assert sent.stdout.strip() == f"message {message_id} queued"
    repeat = cli("send", "--to", "ann@example.edu", "--subject", "Code {{ code }}",
                 "--text", "x", "--data", "code=1", "--tenant", "acme",
                 "--idempotency-key", "login-1")  # fmt: skip
    assert "already accepted" in repeat.stdout
    with runtime.sessions() as session:
        message = session.get(Message, message_id)
        assert message is not None and message.html == "<p>Your code is {{ code }}</p>"
        assert session.scalar(select(func.count()).select_from(Message)) == 1

    template_id = str(_template(runtime, acme.tenant_id))
    both = cli("send", "--to", "ann@example.edu", "--subject", "s", "--template", template_id,
               "--tenant", "acme")  # fmt: skip
    assert both.exit_code == 1 and "not both" in both.stderr
    missing = cli("send", "--to", "ann@example.edu", "--subject", "s", "--html", "@/no/such",
                  "--tenant", "acme")  # fmt: skip
    assert missing.exit_code == 2

    queue = cli("queue")
    assert queue.exit_code == 0, queue.output
    row = next(line for line in queue.stdout.splitlines() if "acme" in line)
    assert [cell.strip() for cell in row.strip("│ ").split("│")] == ["acme", "1", "1", "1"]
    assert f"oldest waiting: message {message_id} to ann@example.edu (acme)" in queue.stdout
    assert "no worker is running" in queue.stdout
    assert cli("queue", "--tenant", "nobody").exit_code == 1


def _reminders(*extra: str) -> tuple[str, ...]:
    return ("send", "--to", "ann@example.edu", "--subject", "Meeting {{ event_at|localtime }}",
            "--text", "See you there", "--tenant", "acme", *extra)  # fmt: skip


def test_send_with_an_event_makes_one_reminder_per_offset_and_a_repeat_makes_none(
    cli: Invoke, acme: TenantKeys, runtime: Runtime
) -> None:
    event = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    args = _reminders("--reference", "meeting-42", "--event-at", event.isoformat(),
                      "--offset", "24h", "--offset", "2h", "--offset", "1w")  # fmt: skip
    first = cli(*args)
    assert first.exit_code == 0, first.output
    lines = first.stdout.strip().splitlines()
    ids = [int(line.split()[3]) for line in lines[:2]]
    assert lines == [
        f"reminder 24h: message {ids[0]} queued for {event - timedelta(days=1)}",
        f"reminder 2h: message {ids[1]} queued for {event - timedelta(hours=2)}",
        f"reminder 1w: skipped, its time ({event - timedelta(weeks=1)}) has passed",
    ]
    again = cli(*args)
    assert again.exit_code == 0, again.output
    assert again.stdout.splitlines()[1] == (
        f"reminder 2h: message {ids[1]} was already made: queued, {event - timedelta(hours=2)}"
    )
    with runtime.sessions() as session:
        rows = session.scalars(select(Message).order_by(Message.id)).all()
    assert [(r.id, r.reminder_offset, r.reference, r.event_at) for r in rows] == [
        (ids[0], 86_400, "meeting-42", event),
        (ids[1], 7_200, "meeting-42", event),
    ]


@pytest.mark.parametrize(
    ("extra", "code", "says"),
    [
        (("--offset", "2h"), 2, "needs --event-at"),
        (("--event-at", "2030-03-01T15:00:00+01:00", "--offset", "2h"), 2, "--reference"),
        (("--event-at", "2030-03-01T15:00:00+01:00", "--reference", "m"), 2, "--offset"),
        (("--event-at", "2030-03-01T15:00:00", "--reference", "m", "--offset", "2h"), 2,
         "needs a time zone"),
        (("--event-at", "2030-03-01T15:00:00Z", "--reference", "m", "--offset", "2h",
          "--idempotency-key", "k"), 2, "--idempotency-key"),
        (("--event-at", "LATER", "--reference", "m", "--offset", "2h"), 2, "ISO 8601"),
        (("--event-at", "FUTURE", "--reference", "m", "--offset", "2x"), 1,
         "'2x' is not an offset such as 24h"),
        (("--event-at", "2001-03-01T15:00:00Z", "--reference", "m", "--offset", "2h"), 1,
         "event_at must be in the future"),
    ],
)  # fmt: skip
def test_reminder_options_that_do_not_fit_are_refused_with_the_reason(
    cli: Invoke, acme: TenantKeys, runtime: Runtime, extra: tuple[str, ...], code: int, says: str
) -> None:
    future = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    result = cli(*_reminders(*(future if arg == "FUTURE" else arg for arg in extra)))
    assert result.exit_code == code, result.output
    assert says in " ".join(result.output.split())
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 0


# -- sending windows -----------------------------------------------------------------------------


def _window_opening_in_two_minutes() -> tuple[str, datetime]:
    """``--send-window`` text for a one-hour UTC window that opens in a little over two minutes."""
    start = (datetime.now(UTC) + timedelta(minutes=3)).replace(second=0, microsecond=0)
    end = start + timedelta(hours=1)
    return f"{start:%H:%M}-{end:%H:%M} UTC", start


def test_campaign_create_takes_a_send_window_and_names_a_wrong_one(
    cli: Invoke, acme: TenantKeys, runtime: Runtime, tmp_path: Path
) -> None:
    _import_people(cli, tmp_path, 2)
    template_id = str(_template(runtime, acme.tenant_id))
    created = cli("campaign", "create", "--tenant", "acme", "--name", "Office hours",
                  "--template", template_id, "--list", "staff",
                  "--send-window", "09:00-17:00 mon-fri contact")  # fmt: skip
    assert created.exit_code == 0, created.output
    campaign = _campaign(runtime, int(created.stdout.split()[1]))
    assert campaign.send_window == {
        "start": "09:00",
        "end": "17:00",
        "days": ["mon", "tue", "wed", "thu", "fri"],
        "timezone": "contact",
    }
    for wrong, says in (
        ("25:00-17:00", "--send-window.start"),
        ("09:00-17:00 mon-fri Moon/Base", "--send-window.timezone"),
        ("office hours", "'09:00-17:00 mon-fri contact'"),
    ):
        refused = cli("campaign", "create", "--tenant", "acme", "--name", "x",
                      "--template", template_id, "--list", "staff", "--send-window", wrong)  # fmt: skip
        assert refused.exit_code == 2, refused.output
        assert says in refused.stderr
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Campaign)) == 1


def test_send_with_a_send_window_waits_for_the_opening_here_and_through_the_api(
    cli: Invoke, acme: TenantKeys, runtime: Runtime
) -> None:
    window, opening = _window_opening_in_two_minutes()
    sent = cli("send", "--to", "ann@example.edu", "--subject", "Hi", "--text", "Hello",
               "--send-window", window, "--tenant", "acme")  # fmt: skip
    assert sent.exit_code == 0, sent.output
    message_id = int(sent.stdout.split()[1])
    assert f"not before {opening:%Y-%m-%d %H:%M:%S} UTC" in sent.stdout
    with serving(runtime) as url:
        remote = cli("send", "--to", "bo@example.edu", "--subject", "Hi", "--text", "Hello",
                     "--send-window", window, "--url", url, "--key", acme.sender)  # fmt: skip
    assert remote.exit_code == 0, remote.output
    assert f"not before {opening:%Y-%m-%d %H:%M:%S} UTC" in remote.stdout
    with runtime.sessions() as session:
        rows = session.scalars(select(Message).order_by(Message.id)).all()
    assert len(rows) == 2 and rows[0].id == message_id
    assert {(m.not_before, m.window_timezone) for m in rows} == {(opening, "UTC")}


# -- through a remote API ------------------------------------------------------------------------


@contextmanager
def serving(runtime: Runtime) -> Iterator[str]:
    """The API on a real socket at 127.0.0.1, in a thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(runtime), log_level="warning", log_config=None, lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_remote_mode_drives_a_campaign_and_sends_through_the_api(
    cli: Invoke, acme: TenantKeys, runtime: Runtime, tmp_path: Path
) -> None:
    _import_people(cli, tmp_path, 2)
    template_id = _template(runtime, acme.tenant_id)
    created = cli("campaign", "create", "--tenant", "acme", "--name", "Remote",
                  "--template", str(template_id), "--list", "staff",
                  "--data", "deadline=Friday", "--data", "personal_message=Hi")  # fmt: skip
    campaign_id = str(int(created.stdout.split()[1]))
    with serving(runtime) as url:
        remote = {"TIDINGS_URL": url, "TIDINGS_API_KEY": acme.sender}
        started = cli("campaign", "start", campaign_id, **remote)
        assert started.exit_code == 0, started.output
        assert "now running, 2 recipients" in started.stdout
        paused = cli("campaign", "pause", campaign_id, "--url", url, "--key", acme.sender)
        assert "now paused" in paused.stdout
        status = cli("campaign", "status", campaign_id, **remote)
        assert (_fields(status.stdout)["status"], _fields(status.stdout)["pending"]) == (
            "paused",
            "2",
        )

        sent = cli("send", "--to", "zed@example.edu", "--subject", "Hi", "--text", "Hello",
                   "--idempotency-key", "k1", **remote)  # fmt: skip
        assert sent.exit_code == 0, sent.output
        assert sent.stdout.strip().endswith("queued")
        event = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
        reminded = cli("send", "--to", "zed@example.edu", "--subject", "Soon", "--text", "Hello",
                       "--reference", "call-9", "--event-at", event.isoformat(),
                       "--offset", "1d", "--offset", "3d", **remote)  # fmt: skip
        assert reminded.exit_code == 0, reminded.output
        assert reminded.stdout.splitlines()[0].endswith(f"queued for {event - timedelta(days=1)}")
        assert "reminder 3d: skipped" in reminded.stdout
        repeat = cli("send", "--to", "zed@example.edu", "--subject", "Soon", "--text", "Hello",
                     "--reference", "call-9", "--event-at", event.isoformat(), "--offset", "24h",
                     **remote)  # fmt: skip
        assert "was already made: queued" in repeat.stdout

        viewer = cli(
            "campaign", "resume", campaign_id, **{**remote, "TIDINGS_API_KEY": acme.viewer}
        )
        assert viewer.exit_code == 1 and "sender role" in viewer.stderr
        wrong = cli("campaign", "status", campaign_id, **{**remote, "TIDINGS_API_KEY": "td_x_y"})
        assert wrong.exit_code == 1 and "refused the key" in wrong.stderr
        missing = cli("campaign", "status", "999999", **remote)
        assert (missing.exit_code, missing.stderr.strip()) == (1, "error: no such campaign")
    assert _campaign(runtime, int(campaign_id)).status == "paused"
    gone = cli("campaign", "status", campaign_id, "--url", url, "--key", acme.sender)
    assert gone.exit_code == 1 and "cannot reach" in gone.stderr
