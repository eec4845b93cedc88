"""``tidings campaign stats ID``: the API's figures as tables, the recipients to a private CSV with
``--csv``, on this machine's database or through a remote API; clear errors otherwise."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from tests.conftest import TenantKeys
from tests.integration.test_campaign_recipients import recipients, seed_results
from tests.integration.test_cli import Invoke, cli, serving
from tidings.runtime import Runtime

__all__ = ["cli"]  # the fixture, imported for pytest


def test_local_stats_print_the_api_figures_and_export_the_recipients(
    cli: Invoke, client: TestClient, runtime: Runtime, acme: TenantKeys, tmp_path: Path
) -> None:
    campaign_id, _ = seed_results(runtime, acme.tenant_id)
    target = tmp_path / "results.csv"
    shown = cli("campaign", "stats", str(campaign_id), "--tenant", "acme", "--csv", str(target))
    assert shown.exit_code == 0, shown.output
    lines = [" ".join(line.replace("│", " ").split()) for line in shown.stdout.splitlines()]
    # 5 recipients, 4 sent; m1 and m2 opened by a person, m1 clicked the shop's link.
    assert "recipients 5" in lines and "sent 4" in lines and "delivered 4" in lines
    assert "opens 2 2 0 50.0 %" in lines
    assert "clicks 1 1 0 25.0 %" in lines
    assert "click-to-open 50.0 %" in lines
    assert "https://shop.example.com/ 1 1 0" in lines
    assert target.read_bytes() == recipients(client, acme, campaign_id).content
    assert target.stat().st_mode & 0o777 == 0o600

    again = cli("campaign", "stats", str(campaign_id), "--tenant", "acme", "--csv", str(target))
    assert again.exit_code == 1 and "already exists" in again.output
    missing = cli("campaign", "stats", "999999", "--tenant", "acme")
    assert missing.exit_code == 1 and "no such campaign" in missing.output
    nowhere = cli("campaign", "stats", str(campaign_id))
    assert nowhere.exit_code == 2 and "--tenant" in nowhere.output


def test_remote_stats_read_the_api_and_stream_the_export(
    cli: Invoke,
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    globex: TenantKeys,
    tmp_path: Path,
) -> None:
    campaign_id, _ = seed_results(runtime, acme.tenant_id)
    local = cli("campaign", "stats", str(campaign_id), "--tenant", "acme")
    target = tmp_path / "remote.csv"
    with serving(runtime) as url:
        remote = {"TIDINGS_URL": url, "TIDINGS_API_KEY": acme.viewer}
        shown = cli("campaign", "stats", str(campaign_id), "--csv", str(target), **remote)
        assert shown.exit_code == 0, shown.output
        assert shown.stdout.replace(f"wrote {target}", "").strip() == local.stdout.strip()
        assert target.read_bytes() == recipients(client, acme, campaign_id).content
        theirs = cli("campaign", "stats", str(campaign_id), "--url", url, "--key", globex.viewer)
        assert theirs.exit_code == 1 and "no such campaign" in theirs.output
    down = cli("campaign", "stats", str(campaign_id), "--url", url, "--key", acme.viewer)
    assert down.exit_code == 1 and "cannot reach" in down.output
