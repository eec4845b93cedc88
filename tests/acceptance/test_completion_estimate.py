"""A throttled campaign of 2,000 recipients, sent by a real worker to a real SMTP server: the
``estimated_completion`` read early (at 20 % sent, some 7 seconds in) is within 10 % of the run's
length of when the campaign really completed.

About 30 seconds of real time, so on one backend (PostgreSQL, where several workers share a
throttle); the estimator's arithmetic is covered without waiting in tests/unit/test_estimate.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.acceptance.conftest import WorkerThread, wait_for_completion, wait_until
from tests.conftest import TenantKeys
from tests.integration import campaign_seed as seed
from tidings.runtime import Runtime

RECIPIENTS = 2000
PER_SECOND = 70  # about 30 s for the whole campaign


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_the_early_estimate_is_within_ten_percent_of_the_true_finish(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    worker: Callable[..., WorkerThread],
) -> None:
    admin = acme.auth(acme.admin)
    limits = {"enabled": True, "per_second": PER_SECOND}
    assert client.put("/v1/throttle", json=limits, headers=admin).status_code == 200
    template = seed.template(runtime, acme.tenant_id, html="<p>Hello {{ first_name }}</p>")
    people = seed.people(runtime, acme.tenant_id, RECIPIENTS)
    audience = seed.contact_list(runtime, acme.tenant_id, "everyone", people)
    created = client.post(
        "/v1/campaigns",
        json={"name": "Throttled", "template_id": template, "list_ids": [audience]},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    campaign_id = created.json()["id"]
    worker(concurrency=20)
    assert client.post(f"/v1/campaigns/{campaign_id}/start", headers=admin).status_code == 202

    def early() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(
            f"/v1/campaigns/{campaign_id}", headers=acme.auth(acme.viewer)
        ).json()
        return body if body["sent"] >= RECIPIENTS // 5 else None

    read = wait_until(early, timeout=30, interval=0.1)
    estimate = datetime.fromisoformat(read["estimated_completion"])
    done = wait_for_completion(client, acme, campaign_id, timeout=120)
    finished = datetime.fromisoformat(done["completed_at"])
    started = datetime.fromisoformat(done["started_at"])
    duration = (finished - started).total_seconds()
    error = (estimate - finished).total_seconds()
    assert done["sent"] == RECIPIENTS
    assert abs(error) <= 0.10 * duration, (
        f"{RECIPIENTS} recipients at {PER_SECOND}/s ran {duration:.1f} s; the estimate read at "
        f"{read['sent']} sent was {error:+.2f} s off ({error / duration:+.1%} of the run)"
    )
