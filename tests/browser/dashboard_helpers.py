"""Helpers shared by the dashboard tests: signing in through the form and reading a page's token."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = _TOKEN.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def sign_in(client: TestClient, key: str) -> str:
    """Signs ``client`` in with ``key`` through the form; returns the session's CSRF token."""
    form = client.get("/login")
    assert form.status_code == 200, form.text
    answer = client.post(
        "/login",
        data={"api_key": key, "csrf_token": csrf_of(form.text), "next": "/"},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    return csrf_of(client.get("/").text)


def make_template(client: TestClient, key: str, **fields: Any) -> int:
    body = {
        "name": "reminder",
        "subject": "Reminder for {{ first_name }}",
        "html": "<p>Dear {{ first_name }}, {{ personal_message }} Deadline: {{ deadline }}.</p>",
        **fields,
    }
    answer = client.post("/v1/templates", json=body, headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 201, answer.text
    template_id: int = answer.json()["id"]
    return template_id


def make_contacts(client: TestClient, key: str, emails: list[str]) -> list[int]:
    ids = []
    for email in emails:
        answer = client.post(
            "/v1/contacts",
            json={"email": email, "first_name": email.split("@")[0].title()},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["id"])
    return ids


def field_error(html: str, field: str) -> str | None:
    """The error message shown next to ``field`` (the element ``{field}-error``), if any."""
    found = re.search(rf'id="{re.escape(field)}-error"[^>]*>(.*?)</p>', html, re.S)
    if not found:
        return None
    return re.sub(r"<[^>]+>", "", found.group(1)).replace("⚠", "").strip()
