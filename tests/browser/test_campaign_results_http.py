"""A campaign's results on the dashboard over plain HTTP (no browser): the funnel with machines
apart, the timeline chart, the links, the empty states, tenant isolation, the live stream of
results, and the rates on the campaigns list read in a fixed number of statements.

Runs on SQLite and PostgreSQL like every database test. Hits are recorded by the tracking flush
(``tracking.hits.flush``), the same function the app's buffer calls.
"""

from __future__ import annotations

import html as html_lib
import json
import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import update

from tests.browser.dashboard_helpers import sign_in
from tests.conftest import TenantKeys
from tests.integration.test_campaign_stats import HOME, PERSON, SENT, hit, seed_campaign
from tests.integration.test_tracking_routes import statements
from tidings.db.engine import transaction
from tidings.db.models import Campaign
from tidings.runtime import Runtime
from tidings.tracking.hits import flush
from tidings.tracking.record import Hit
from tidings.web.routes.events import INTERVAL_SECONDS

QUIET_TICKS = 3  # reads of the stream with nothing new, before the hits come
#: A link whose address is long and carries characters HTML must escape.
ODD_URL = "https://shop.example.com/a/very/long/path/" + "x" * 80 + '?q=<b>"quoted"</b>&n=1'


def _stat(page: str, key: str) -> tuple[str, str | None]:
    """The figure ``key`` of the results section: its count and its rate (if it has one)."""
    found = re.search(rf'data-stat="{key}">(.*?)</div>', page, re.S)
    assert found, f"no figure {key}"
    value = re.search(r"<span data-value>(.*?)</span>", found.group(1))
    rate = re.search(r"<span class=\"rate\" data-rate>(.*?)<span", found.group(1))
    assert value
    return value.group(1), rate.group(1) if rate else None


def _events(stream: str) -> list[tuple[str, str]]:
    return re.findall(r"event: (\w+)\ndata: (.*)\n", stream)


def _seed_results(runtime: Runtime, tenant_id: int, prefix: str = "") -> int:
    """A completed campaign of five sent and one failed message with people's and machines'
    opens and clicks (the figures of ``test_campaign_stats``), and a click on ``ODD_URL``."""
    t = tenant_id
    campaign_id, (m1, m2, m3, m4, m5, _failed) = seed_campaign(
        runtime, t, ["sent", "sent", "sent", "sent", "sent", "failed"], prefix=prefix
    )
    flush(
        runtime,
        [
            hit(t, m1, "open", 600),  # a person, twice
            hit(t, m1, "open", 3600),
            hit(t, m1, "click", 610, link=1),
            hit(t, m2, "open", 300, agent="Mozilla/5.0", network="17.58.1.0/24"),  # Apple MPP
            hit(t, m3, "click", 20, link=1),  # a scanner: two links within a second
            hit(t, m3, "click", 20.3, link=2),
            hit(t, m4, "open", 1),  # fetched on delivery
        ],
    )
    flush(
        runtime,
        [
            hit(t, m2, "open", 7200),  # the person behind Apple's proxy, later
            Hit("click", t, m5, 3, ODD_URL, SENT + timedelta(seconds=900), PERSON, HOME),
        ],
    )
    return campaign_id


def test_a_campaign_page_shows_the_funnel_with_machines_apart_the_timeline_and_the_links(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    campaign_id = _seed_results(runtime, acme.tenant_id)
    sign_in(client, acme.viewer)
    page = client.get(f"/campaigns/{campaign_id}", follow_redirects=False)
    assert page.status_code == 200, page.text
    body = page.text
    assert _stat(body, "sent") == ("5", None)
    assert _stat(body, "delivered") == ("5", None)
    assert _stat(body, "opens_unique") == ("2", "40\u202f%")  # m1 and m2's person, of 5
    assert _stat(body, "clicks_unique") == ("2", "40\u202f%")  # m1 (shop), m5 (the odd link)
    assert _stat(body, "opens_machine") == ("2", None)  # Apple's proxy, the prefetch
    assert _stat(body, "clicks_machine") == ("2", None)  # the scanner's burst
    assert _stat(body, "bounced_hard") == ("0", None)
    assert _stat(body, "bounced_soft") == ("0", None)
    assert _stat(body, "complaints") == ("0", "0\u202f%")
    assert _stat(body, "unsubscribes") == ("0", "0\u202f%")
    assert "Apple Mail Privacy Protection" in body and "link scanners" in body
    # Tracking is off in the settings today, but opens and clicks were counted: no "not tracked".
    assert "data-tracking-note" not in body
    # The timeline: an SVG named and described for screen readers, its figures also a table.
    svg = re.search(
        r'<svg role="img" aria-labelledby="timeline-title timeline-desc".*?</svg>', body, re.S
    )
    assert svg, "no timeline chart"
    assert '<title id="timeline-title">Opens and clicks per 5 minutes' in svg.group(0)
    assert (
        "opens by people 3, clicks by people 2, opens by machines 2, clicks by machines 2."
        in svg.group(0)
    )
    assert "Time (UTC)" in svg.group(0)
    assert "The same figures as a table" in body
    # The links, most clicked first; the odd address escaped, cut, and whole in its title.
    rows = re.findall(
        r'<td class="url"><span title="([^"]*)">([^<]*)</span></td>((?:<td class="num">[^<]*</td>)+)',
        body,
    )
    assert [html_lib.unescape(title) for title, _, _ in rows] == [
        "https://shop.example.com/",
        ODD_URL,
        "https://blog.example.com/",
    ]
    cells = [re.findall(r'<td class="num">([^<]*)</td>', figures) for _, _, figures in rows]
    assert cells == [["1", "1", "1"], ["1", "1", "0"], ["0", "0", "1"]]
    shown = html_lib.unescape(rows[1][1])
    assert shown.endswith("…") and len(shown) == 60 and ODD_URL.startswith(shown[:-1])
    assert '<b>"quoted"' not in body  # escaped everywhere
    # The export: a download of the recipients' results.
    assert re.search(
        rf'<a class="button button-quiet" href="/campaigns/{campaign_id}/recipients.csv" download=',
        body,
    )


def test_a_campaign_without_tracking_or_events_shows_empty_states_and_no_rates(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    nothing_sent, _ = seed_campaign(runtime, acme.tenant_id, ["failed", "suppressed"])
    not_yet, _ = seed_campaign(runtime, acme.tenant_id, ["queued"], prefix="queued-")
    sign_in(client, acme.viewer)
    for campaign_id in (nothing_sent, not_yet):
        page = client.get(f"/campaigns/{campaign_id}", follow_redirects=False)
        assert page.status_code == 200, page.text
        body = page.text
        assert _stat(body, "delivered") == ("0", None)
        assert _stat(body, "opens_unique") == ("0", "—")  # no rate of nothing, no division
        assert _stat(body, "clicks_unique") == ("0", "—")
        assert _stat(body, "unsubscribes") == ("0", "—")
        assert "This campaign tracks neither opens nor clicks" in body
        assert 'data-empty="timeline">No opens or clicks yet.' in body
        assert 'data-empty="links">No clicks yet.' in body
        assert "data-engagement=" not in body  # an ended campaign long ago: nothing to follow
    listed = client.get("/", follow_redirects=False).text
    assert len(re.findall(r'data-rate="open">—</td>', listed)) == 2


def test_a_campaign_not_started_has_no_results_yet_nor_an_export(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    campaign_id, _ = seed_campaign(runtime, acme.tenant_id, ["queued"])
    with transaction(runtime.sessions) as session:
        session.execute(
            update(Campaign)
            .where(Campaign.id == campaign_id)
            .values(status="draft", started_at=None)
        )
    sign_in(client, acme.viewer)
    page = client.get(f"/campaigns/{campaign_id}", follow_redirects=False)
    assert page.status_code == 200, page.text
    assert "show here once it starts" in page.text
    assert "data-stat=" not in page.text and "recipients.csv" not in page.text
    assert "data-engagement=" not in page.text


def test_another_tenants_campaign_results_are_a_404_page_and_its_stream_follows_nothing(
    client: TestClient, runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    theirs = _seed_results(runtime, globex.tenant_id)
    with transaction(runtime.sessions) as session:  # theirs would be followed if it were ours
        session.execute(update(Campaign).where(Campaign.id == theirs).values(status="running"))
    sign_in(client, acme.admin)
    answer = client.get(f"/campaigns/{theirs}", follow_redirects=False)
    assert answer.status_code == 404
    assert "no such campaign" in answer.text and "Opened by people" not in answer.text
    stream = client.get(f"/events/campaigns?engagement={theirs}")
    assert _events(stream.text) == [("progress", "[]"), ("done", "{}")]


def test_the_stream_sends_a_running_campaigns_results_again_only_when_they_moved(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    t = acme.tenant_id
    campaign_id, (m1, m2) = seed_campaign(runtime, t, ["sent", "sent"])
    with transaction(runtime.sessions) as session:
        session.execute(update(Campaign).where(Campaign.id == campaign_id).values(status="running"))
    sign_in(client, acme.viewer)
    page = client.get(f"/campaigns/{campaign_id}").text
    assert f'data-live-ids="{campaign_id}" data-engagement="{campaign_id}"' in page
    # The hits are recorded a few ticks after the first results went out: an unchanged campaign
    # in between must send nothing, so the next results to arrive are the moved ones.
    later = threading.Timer(
        QUIET_TICKS * INTERVAL_SECONDS,
        flush,
        (runtime, [hit(t, m1, "open", 600), hit(t, m2, "open", 60, agent="Mozilla/5.0")]),
    )
    results: list[dict[str, Any]] = []
    with client.stream(
        "GET", f"/events/campaigns?ids={campaign_id}&engagement={campaign_id}"
    ) as stream:
        lines = stream.iter_lines()
        for line in lines:
            if line == "event: engagement":
                results.append(json.loads(next(lines).removeprefix("data: ")))
                if len(results) == 2:
                    break
                later.start()
    later.join()
    first, moved = results[0]["html"], results[1]["html"]
    assert results[0]["id"] == campaign_id
    assert _stat(first, "opens_unique") == ("0", "0\u202f%")
    assert _stat(moved, "opens_unique") == ("1", "50\u202f%")
    assert _stat(moved, "opens_machine") == ("1", None)
    assert "timeline-title" in moved


def test_an_ended_campaign_is_followed_for_a_day_then_its_stream_ends(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    campaign_id, _ = seed_campaign(runtime, acme.tenant_id, ["sent"])
    sign_in(client, acme.viewer)
    path = f"/events/campaigns?ids={campaign_id}&engagement={campaign_id}"
    with transaction(runtime.sessions) as session:
        session.execute(
            update(Campaign)
            .where(Campaign.id == campaign_id)
            .values(completed_at=datetime.now(UTC) - timedelta(hours=25))
        )
    assert [name for name, _ in _events(client.get(path).text)] == ["progress", "done"]
    assert "data-engagement=" not in client.get(f"/campaigns/{campaign_id}").text
    with transaction(runtime.sessions) as session:
        session.execute(
            update(Campaign)
            .where(Campaign.id == campaign_id)
            .values(completed_at=datetime.now(UTC) - timedelta(hours=1))
        )
    page = client.get(f"/campaigns/{campaign_id}").text
    assert f'data-live-ids="{campaign_id}" data-engagement="{campaign_id}"' in page
    with client.stream("GET", path) as stream:
        names = []
        for line in stream.iter_lines():
            if line.startswith("event: "):
                names.append(line[7:])
                if len(names) == 2:
                    break
    assert names == ["progress", "engagement"]  # and no "done": the results still move


def test_the_campaigns_list_shows_rates_read_in_the_same_statements_for_any_number_of_campaigns(
    client: TestClient, runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    first = _seed_results(runtime, acme.tenant_id)
    _seed_results(runtime, globex.tenant_id)  # not shown, and not counted in acme's
    sign_in(client, acme.viewer)
    with statements(runtime) as few:
        listed = client.get("/", follow_redirects=False)
    assert listed.status_code == 200
    row = re.search(rf'<tr data-campaign="{first}">.*?</tr>', listed.text, re.S)
    assert row
    assert re.search(r'data-rate="open" title="2 of 5 delivered">40\u202f%</td>', row.group(0))
    assert re.search(r'data-rate="click" title="2 of 5 delivered">40\u202f%</td>', row.group(0))
    for n in range(4):
        _seed_results(runtime, acme.tenant_id, prefix=f"more{n}-")
    with statements(runtime) as many:
        listed = client.get("/", follow_redirects=False)
    assert listed.text.count('data-rate="open" title="2 of 5 delivered">40\u202f%') == 5
    assert len(many) == len(few), (few, many)
