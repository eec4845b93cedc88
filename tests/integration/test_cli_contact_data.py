"""``tidings contacts data | erase | preferences`` against a real database (both dialects): the
API's access document, erasure and preference services, with clear refusals and exit codes."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from tests.conftest import TenantKeys
from tests.integration.test_cli import Invoke, _env, _import_people, cli
from tidings.cli.app import app
from tidings.config import Settings
from tidings.db.engine import transaction
from tidings.db.models import Contact, Suppression
from tidings.runtime import Runtime
from tidings.services import categories, contact_data

__all__ = ["cli"]  # the fixture, used by name


def _first_contact(runtime: Runtime, email: str) -> int:
    with runtime.sessions() as session:
        contact_id = session.scalar(select(Contact.id).where(Contact.email == email))
        assert contact_id is not None
        return contact_id


def _categories(runtime: Runtime, tenant_id: int, *names: str) -> None:
    with transaction(runtime.sessions) as session:
        for name in names:
            categories.create_category(
                session=session,
                tenant_id=tenant_id,
                name=name,
                description=None,
                now=datetime.now(UTC),
            )


def test_data_writes_the_access_document_to_stdout_or_a_private_file(
    cli: Invoke, acme: TenantKeys, runtime: Runtime, tmp_path: Path
) -> None:
    _import_people(cli, tmp_path, 2)
    p0 = _first_contact(runtime, "p0@example.edu")
    shown = cli("contacts", "data", str(p0), "--tenant", "acme")
    assert shown.exit_code == 0, shown.output
    document = json.loads(shown.stdout)
    assert document["contact"]["email"] == "p0@example.edu"
    assert [x["name"] for x in document["lists"]] == ["staff"]
    assert document["next_cursor"] is None and document["messages"] == []

    out = tmp_path / "p0.json"
    written = cli("contacts", "data", str(p0), "--tenant", "acme", "--output", str(out))
    assert written.exit_code == 0 and f"wrote {out}" in written.stdout
    assert json.loads(out.read_text()) == document
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    again = cli("contacts", "data", str(p0), "--tenant", "acme", "--output", str(out))
    assert again.exit_code == 1 and "already exists" in again.stderr

    missing = cli("contacts", "data", "999999", "--tenant", "acme")
    assert missing.exit_code == 1 and "no such contact" in missing.stderr
    assert cli("contacts", "data", "0", "--tenant", "acme").exit_code == 2
    assert cli("contacts", "data", "x", "--tenant", "acme").exit_code == 2


def test_data_of_another_tenants_contact_is_no_such_contact(
    cli: Invoke, acme: TenantKeys, globex: TenantKeys, runtime: Runtime, tmp_path: Path
) -> None:
    _import_people(cli, tmp_path, 1)
    p0 = _first_contact(runtime, "p0@example.edu")
    for command in (("data",), ("preferences",), ("erase", "--yes")):
        other = cli("contacts", command[0], str(p0), "--tenant", "globex", *command[1:])
        assert other.exit_code == 1 and "no such contact" in other.stderr, command
    assert _first_contact(runtime, "p0@example.edu") == p0


def test_erase_asks_first_and_prints_what_was_erased(
    settings: Settings, cli: Invoke, acme: TenantKeys, runtime: Runtime, tmp_path: Path
) -> None:
    _import_people(cli, tmp_path, 2)
    p0 = _first_contact(runtime, "p0@example.edu")
    runner = CliRunner()
    env = _env(settings)
    for answer in ("n\n", "", "maybe\n\n"):  # no, end of input, and a non-answer then Enter
        kept = runner.invoke(app, ["contacts", "erase", str(p0), "--tenant", "acme"],
                             input=answer, env=env)  # fmt: skip
        assert kept.exit_code == 1, (answer, kept.output)
        assert "Erase contact" in kept.stderr and "p0@example.edu" in kept.stderr
        assert "nothing was erased" in kept.stderr
    assert _first_contact(runtime, "p0@example.edu") == p0

    confirmed = runner.invoke(app, ["contacts", "erase", str(p0), "--tenant", "acme"],
                              input="y\n", env=env)  # fmt: skip
    assert confirmed.exit_code == 0, confirmed.output
    assert f"erased contact {p0}" in confirmed.stdout
    assert "stays suppressed as a keyed hash (manual)" in confirmed.stdout
    assert "messages kept without address and content  0" in confirmed.stdout
    with runtime.sessions() as session:
        assert session.scalar(select(Contact).where(Contact.email == "p0@example.edu")) is None
        kept_hash = session.scalars(select(Suppression.email)).all()
        assert len(kept_hash) == 1 and "p0@" not in kept_hash[0]

    gone = cli("contacts", "erase", str(p0), "--tenant", "acme", "--yes")
    assert gone.exit_code == 1 and "no such contact" in gone.stderr
    p1 = _first_contact(runtime, "p1@example.edu")
    done = cli("contacts", "erase", str(p1), "--tenant", "acme", "--yes")
    assert done.exit_code == 0 and f"erased contact {p1}" in done.stdout


def test_preferences_are_shown_and_set_with_clear_refusals(
    cli: Invoke, acme: TenantKeys, runtime: Runtime, tmp_path: Path
) -> None:
    _import_people(cli, tmp_path, 1)
    p0 = str(_first_contact(runtime, "p0@example.edu"))
    none_yet = cli("contacts", "preferences", p0, "--tenant", "acme")
    assert none_yet.exit_code == 0 and "no categories yet" in none_yet.stdout
    _categories(runtime, acme.tenant_id, "news", "offers")

    shown = cli("contacts", "preferences", p0, "--tenant", "acme")
    assert shown.exit_code == 0, shown.output
    assert _rows(shown.stdout) == {"news": "yes", "offers": "yes"}
    changed = cli("contacts", "preferences", p0, "--tenant", "acme",
                  "--set", "news=false", "--set", "offers=true")  # fmt: skip
    assert changed.exit_code == 0, changed.output
    assert _rows(changed.stdout) == {"news": "no", "offers": "yes"}
    assert _rows(cli("contacts", "preferences", p0, "--tenant", "acme").stdout) == {
        "news": "no",
        "offers": "yes",
    }

    for bad in ("news", "news=maybe", "=true", "news=true --set news=false"):
        refused = cli("contacts", "preferences", p0, "--tenant", "acme",
                      *[part for pair in bad.split(" --set ") for part in ("--set", pair)])  # fmt: skip
        assert refused.exit_code == 2, (bad, refused.output)
        assert "--set" in refused.output
    unknown = cli("contacts", "preferences", p0, "--tenant", "acme",
                  "--set", "offers=false", "--set", "gossip=false")  # fmt: skip
    assert unknown.exit_code == 1 and "no category named 'gossip'" in unknown.stderr
    assert _rows(cli("contacts", "preferences", p0, "--tenant", "acme").stdout)["offers"] == "yes"
    missing = cli("contacts", "preferences", "999999", "--tenant", "acme", "--set", "news=true")
    assert missing.exit_code == 1 and "no such contact" in missing.stderr
    nobody = cli("contacts", "preferences", p0, "--tenant", "nobody")
    assert nobody.exit_code == 1 and "nobody" in nobody.stderr


def _rows(out: str) -> dict[str, str]:
    """The category table: ``name -> yes|no``."""
    rows: dict[str, str] = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").replace("┃", "│").split("│")]
        if len(cells) == 2 and cells[1] in ("yes", "no"):
            rows[cells[0]] = cells[1]
    return rows


def test_data_holds_every_message_not_only_the_first_page(
    cli: Invoke,
    client: TestClient,
    acme: TenantKeys,
    runtime: Runtime,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(contact_data, "MESSAGES_PAGE", 2)
    _import_people(cli, tmp_path, 1)
    p0 = _first_contact(runtime, "p0@example.edu")
    for n in range(5):
        sent = client.post(
            "/v1/messages",
            json={"contact_id": p0, "subject": f"note {n}", "text": "hi"},
            headers=acme.auth(acme.sender),
        )
        assert sent.status_code in (201, 202), sent.text
    first_page = client.get(f"/v1/contacts/{p0}/data", headers=acme.auth(acme.viewer)).json()
    assert len(first_page["messages"]) == 2 and first_page["next_cursor"] is not None
    shown = cli("contacts", "data", str(p0), "--tenant", "acme")
    document = json.loads(shown.stdout)
    assert [m["subject"] for m in document["messages"]] == [f"note {n}" for n in range(4, -1, -1)]
    assert document["next_cursor"] is None
