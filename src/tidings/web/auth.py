"""Who is using the dashboard: the signed-in API key, looked up again on every request.

Reading pages needs any key; every POST also needs the session's CSRF token and the role the same
action needs in the API (``SenderAction``, ``AdminAction``), so a viewer's session sees everything
and changes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse

from tidings.api.deps import NowDep, RuntimeDep
from tidings.domain import Role
from tidings.errors import PermissionDenied
from tidings.services.tenants import Principal
from tidings.web import actions, security
from tidings.web.inbox import outbox_dir
from tidings.web.pages import WRITE_SCOPE_KEY, CsrfRejected, SignInRequired, render


@dataclass(frozen=True, slots=True)
class WebUser:
    principal: Principal
    key_name: str
    key_prefix: str
    tenant_name: str
    csrf_token: str  # for the forms of this page

    @property
    def tenant_id(self) -> int:
        return self.principal.tenant_id

    @property
    def role(self) -> Role:
        return self.principal.role

    def can(self, role: str) -> bool:
        """For templates: whether to offer an action that needs ``role``."""
        return self.principal.role.allows(Role(role))


def current_user(request: Request, runtime: RuntimeDep, now: NowDep) -> WebUser:
    """The signed-in key; a missing, altered or expired cookie, or a revoked key, means sign in.

    Looked up in a transaction of its own, ended at once, as the API does with its keys: on SQLite
    every transaction holds the write lock, and the request's may begin much later (an import
    reads its whole upload first)."""
    value = request.cookies.get(security.SESSION_COOKIE)
    claims = security.read_session(secret=runtime.secret_key, value=value, now=now)
    if claims is None or value is None:
        raise SignInRequired()
    with runtime.sessions() as session, session.begin():
        found = actions.signed_in_key(session=session, key_id=claims.key_id)
    if found is None:
        raise SignInRequired()
    key, tenant = found
    return WebUser(
        principal=Principal(tenant_id=key.tenant_id, key_id=key.id, role=Role(key.role)),
        key_name=key.name,
        key_prefix=key.prefix,
        tenant_name=tenant.name,
        csrf_token=security.csrf_token(secret=runtime.secret_key, session_value=value),
    )


UserDep = Annotated[WebUser, Depends(current_user)]


async def presented_csrf_token(request: Request) -> str | None:
    """The token in the form's hidden field, or in the header htmx requests carry."""
    header = request.headers.get(security.CSRF_HEADER)
    if header:
        return header
    form = await request.form()  # parsed once; FastAPI's Form() parameters reuse it
    value = form.get(security.CSRF_FIELD)
    return value if isinstance(value, str) else None


def _action(role: Role) -> Callable[[Request, WebUser], Awaitable[WebUser]]:
    async def check(request: Request, user: UserDep) -> WebUser:
        # The CSRF check comes first: a forged request learns nothing, not even the role it lacks.
        if not security.tokens_match(await presented_csrf_token(request), user.csrf_token):
            raise CsrfRejected()
        if not user.role.allows(role):
            raise PermissionDenied(
                f"your key ({user.key_name}) is a {user.role.value} key; this needs {role.value}"
            )
        request.scope[WRITE_SCOPE_KEY] = True
        return user

    return check


#: A POST any signed-in key may make (signing out).
ViewerAction = Annotated[WebUser, Depends(_action(Role.viewer))]
#: A POST that changes campaigns, contacts or lists.
SenderAction = Annotated[WebUser, Depends(_action(Role.sender))]
#: A POST that changes tenant settings (the throttle).
AdminAction = Annotated[WebUser, Depends(_action(Role.admin))]


#: Short confirmations shown after an action redirected back (``?done=...``): fixed texts, so a
#: crafted link cannot put words on the page.
NOTICES = {
    "started": "The campaign has started.",
    "scheduled": "The campaign is scheduled.",
    "saved": "Saved.",
    "draft": "The campaign was saved as a draft.",
    "paused": "The campaign is paused: nothing more is sent until you resume it.",
    "resumed": "The campaign is running again.",
    "cancelled": "The campaign is cancelled.",
    "retried": "The failed messages are back in the queue.",
    "requeued": "The message is back in the queue.",
    "test-sent": "The test is on its way: its subject starts with [TEST], and its unsubscribe "
    "link only shows a preview page. The campaign's figures do not count it.",
    "list-created": "The list was created.",
    "signup-saved": "The sign-up settings were saved.",
    "changed": "The campaign was changed.",
    "deleted": "The draft was deleted.",
    "template-saved": "The template was saved.",
    "transport-answered": "The transport answered: it can send.",
    "transport-failed": "The transport did not answer as it should: its last error is below.",
    "template-deleted": "The template was deleted.",
    "signed-out": "You are signed out.",
    "preferences-saved": "The contact's preferences were saved.",
    "contact-erased": "The contact was erased: its address is kept only as a keyed hash in its "
    "past messages and events, and stays suppressed.",
    "segment-renamed": "The segment was renamed.",
    "segment-deleted": "The segment was deleted.",
    "domain-added": "The domain was added: publish its DNS records, then verify it.",
    "domain-checked": "The domain's DNS records were checked.",
    "domain-rotated": "A new DKIM key was made: publish its record beside the previous one.",
    "domain-deleted": "The domain was removed: its mail is no longer signed.",
}


def show(
    request: Request, user: WebUser, name: str, *, status_code: int = 200, **context: object
) -> HTMLResponse:
    """A dashboard page for ``user``: the layout needs who is signed in and what to offer."""
    runtime = request.app.state.runtime
    done = request.query_params.get("done", "")
    return render(
        request,
        name,
        {
            "user": user,
            "has_inbox": outbox_dir(runtime.settings.resolved_transport_url()) is not None,
            "notice": NOTICES.get(done),
            **context,
        },
        status_code=status_code,
    )
