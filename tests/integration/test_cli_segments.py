"""``tidings segments`` and ``tidings campaign create --segment`` against a real database."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import TenantKeys
from tests.integration.test_cli import Invoke, _campaign, _import_people, _template, cli
from tidings.runtime import Runtime

__all__ = ["cli"]  # the fixture, used by name

EVEN = '{"any": [{"field": "email", "op": "starts_with", "value": "p0@"}, {"field": "email", "op": "starts_with", "value": "p2@"}]}'


def test_segments_are_created_listed_previewed_and_used_by_a_campaign(
    cli: Invoke, acme: TenantKeys, runtime: Runtime, tmp_path: Path
) -> None:
    _import_people(cli, tmp_path, 4)
    created = cli("segments", "create", "--tenant", "acme", "--name", "evens", "--filter", EVEN)
    assert created.exit_code == 0, created.output
    assert "2 contacts match now" in created.stdout
    segment_id = int(created.stdout.split()[1])

    listed = cli("segments", "list", "--tenant", "acme")
    assert listed.exit_code == 0 and "evens" in listed.stdout and " 2 " in listed.stdout

    stored = tmp_path / "filter.json"
    stored.write_text('{"field": "email", "op": "contains", "value": "@EXAMPLE.edu"}')
    preview = cli("segments", "preview", "--tenant", "acme", "--filter", f"@{stored}")
    assert preview.exit_code == 0, preview.output
    assert "4 contacts match" in preview.stdout and "p3@example.edu" in preview.stdout
    saved = cli("segments", "preview", "--tenant", "acme", "--segment", str(segment_id))
    assert "2 contacts match" in saved.stdout and "p1@" not in saved.stdout

    wrong = cli("segments", "preview", "--tenant", "acme", "--filter",
                '{"all": [{"field": "email", "op": "near", "value": "x"}]}')  # fmt: skip
    assert wrong.exit_code == 1 and "op must be one of" in wrong.stderr
    not_json = cli("segments", "create", "--tenant", "acme", "--name", "x", "--filter", "{")
    assert not_json.exit_code == 2 and "not JSON" in not_json.output

    template_id = _template(runtime, acme.tenant_id)
    campaign = cli("campaign", "create", "--tenant", "acme", "--name", "evens only",
                   "--template", str(template_id), "--segment", "evens", "--start")  # fmt: skip
    assert campaign.exit_code == 0, campaign.output
    campaign_id = int(campaign.stdout.split()[1])
    started = _campaign(runtime, campaign_id)
    assert started.segment_ids == [segment_id] and started.recipient_count == 2
    missing = cli("campaign", "create", "--tenant", "acme", "--name", "x",
                  "--template", str(template_id), "--segment", "nope")  # fmt: skip
    assert missing.exit_code == 1 and "no segment named 'nope'" in missing.stderr


def test_segments_are_shown_updated_and_deleted_unless_a_waiting_campaign_uses_them(
    cli: Invoke, acme: TenantKeys, globex: TenantKeys, runtime: Runtime, tmp_path: Path
) -> None:
    _import_people(cli, tmp_path, 4)
    created = cli("segments", "create", "--tenant", "acme", "--name", "evens", "--filter", EVEN)
    segment_id = created.stdout.split()[1]

    shown = cli("segments", "show", segment_id, "--tenant", "acme")
    assert shown.exit_code == 0, shown.output
    assert f"segment {segment_id}: evens" in shown.stdout and "contacts now: 2" in shown.stdout
    assert '"starts_with"' in shown.stdout

    renamed = cli("segments", "update", segment_id, "--tenant", "acme", "--name", "pairs")
    assert renamed.exit_code == 0, renamed.output
    assert f"segment {segment_id} (pairs) updated: 2 contacts match now" in renamed.stdout
    stored = tmp_path / "all.json"
    stored.write_text('{"field": "email", "op": "contains", "value": "@example.edu"}')
    refiltered = cli("segments", "update", segment_id, "--tenant", "acme", "--filter", f"@{stored}")
    assert refiltered.exit_code == 0 and "4 contacts match now" in refiltered.stdout
    nothing = cli("segments", "update", segment_id, "--tenant", "acme")
    assert nothing.exit_code == 2 and "give --name and/or --filter" in nothing.stderr
    wrong = cli("segments", "update", segment_id, "--tenant", "acme",
                "--filter", '{"field": "email", "op": "near", "value": "x"}')  # fmt: skip
    assert wrong.exit_code == 1 and "op must be one of" in wrong.stderr
    cli("segments", "create", "--tenant", "acme", "--name", "other", "--filter", EVEN)
    taken = cli("segments", "update", segment_id, "--tenant", "acme", "--name", "other")
    assert taken.exit_code == 1 and "already exists" in taken.stderr

    for command in (("show",), ("update", "--name", "x"), ("delete",)):
        theirs = cli("segments", command[0], segment_id, "--tenant", "globex", *command[1:])
        assert theirs.exit_code == 1 and "no such segment" in theirs.stderr, command

    template_id = _template(runtime, acme.tenant_id)
    draft = cli("campaign", "create", "--tenant", "acme", "--name", "later",
                "--template", str(template_id), "--segment", "pairs")  # fmt: skip
    assert draft.exit_code == 0, draft.output
    campaign_id = draft.stdout.split()[1]
    refused = cli("segments", "delete", segment_id, "--tenant", "acme")
    assert refused.exit_code == 1
    assert f"campaign {campaign_id} has not started yet and uses this segment" in refused.stderr
    assert cli("segments", "show", segment_id, "--tenant", "acme").exit_code == 0

    assert cli("campaign", "cancel", campaign_id, "--tenant", "acme").exit_code == 0
    deleted = cli("segments", "delete", segment_id, "--tenant", "acme")
    assert deleted.exit_code == 0 and f"segment {segment_id} deleted" in deleted.stdout
    gone = cli("segments", "show", segment_id, "--tenant", "acme")
    assert gone.exit_code == 1 and "no such segment" in gone.stderr
    assert cli("segments", "delete", "0", "--tenant", "acme").exit_code == 2
