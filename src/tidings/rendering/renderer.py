"""``Renderer``: compile a template once, then render it per recipient, fast and within limits.

Template variables, and who wins when names clash: the recipient's own variables (``email``,
``name``, ``first_name``, ``last_name``, ``attributes``, ``unsubscribe_url``,
``preferences_url``) always win over the caller's data, so campaign data can neither impersonate
the recipient nor replace the unsubscribe link. The caller's data is merged at the top level
(``{{ deadline }}``) and is also reachable whole as ``data`` (``{{ data.email }}`` when a key
clashes). The sandbox's globals (``range``, ``dict``, ``cycler``, ``joiner``, ``namespace``)
win over the caller's data too. A missing value (``None``) prints as nothing.

A reminder's message also has ``event_at``, the time of its event as an aware datetime, which wins
over an ``event_at`` in the data (``with_event``); the ``localtime`` filter shows it, or any time,
in the recipient's zone and language (``localtime.py``): ``Recipient.timezone`` and ``locale``.

A ``Renderer`` runs tenant templates in the process that calls it: in Tidings that is only ever a
render process of ``pool.RenderPool`` (which holds the hard limits). The serving process uses it
for ``variables`` (the signed links need the secret, which render processes never see) and for
content without any template syntax, which renders to itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from types import TracebackType
from typing import Any, Literal, Protocol

from jinja2 import Template, TemplateSyntaxError, meta
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError

from tidings import errors, tokens
from tidings.clock import Clock, SystemClock
from tidings.rendering.localtime import LOCAL_KEY
from tidings.rendering.sandbox import (
    BUDGET,
    FORBIDDEN_NODES,
    SPEND_FACTOR,
    Budget,
    GuardedEnvironment,
    RenderInterrupted,
    RenderLimitExceeded,
    guard_loops,
)
from tidings.rendering.text import html_to_text

Part = Literal["subject", "html", "text"]
COMPILE_CACHE_SIZE = 128  # compiled templates remembered by content
#: Larger content is compiled each time rather than pinned in memory by the cache.
COMPILE_CACHE_MAX_CHARS = 64 * 1024
#: ``confirm_url`` only acts in the confirmation mail of a public sign-up (``services/signups``):
#: in any other message it names no sign-up, and its page answers like a forged link.
LINK_KINDS: tuple[tokens.TokenKind, ...] = ("unsubscribe", "preferences", "confirm")
_LINK_PATHS = tokens.LINK_PATHS


class RenderSettings(Protocol):
    """What a ``Renderer`` reads of ``Settings`` (a render process gets only these, and so does
    not import the settings machinery: it starts faster)."""

    @property
    def public_url(self) -> str: ...
    @property
    def render_timeout_seconds(self) -> float: ...
    @property
    def render_max_output_bytes(self) -> int: ...


@dataclass(frozen=True)
class Recipient:
    """Who a mail is rendered for: a contact, or an ad-hoc address (``contact_id`` None)."""

    email: str
    name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    contact_id: int | None = None
    #: The queued message this render is for: its links act for this recipient (``tokens.py``).
    #: None (a preview, the check at accept): the links are inert placeholders.
    message_id: int | None = None
    contact_created: int | None = None  # ``tokens.contact_stamp`` of the contact, if any
    #: IANA zone that ``localtime`` shows times in: the contact's, else the tenant's default;
    #: None: UTC.
    timezone: str | None = None
    locale: str | None = None  # language tag (``de``, ``pt-BR``) for ``localtime``; None: English


class ResourceExhausted(errors.RenderError):
    """The render ran out of memory or CPU time: the process that ran it is replaced."""


@dataclass(frozen=True)
class RenderedContent:
    subject: str  # one line: CR/LF never reach a header
    html: str | None
    text: str  # always present: derived from the HTML when the template has no text body


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
    """Opaque to callers: the compiled parts, reusable for any number of renders and threads.

    A part is a ``str`` when it holds no template syntax at all (see ``_literal``).
    """

    subject: Template | str
    html: Template | str | None
    text: Template | str | None
    #: Every variable the parts read: signed links are only made for templates that print them.
    names: frozenset[str]


class Renderer:
    """Compiles and renders tenant templates in the sandbox; one per process is enough."""

    def __init__(
        self,
        *,
        settings: RenderSettings,
        secret_key: str,
        clock: Clock | None = None,
        on_part: Callable[[Part], None] | None = None,
    ) -> None:
        self._public_url = settings.public_url
        self._secret = secret_key
        self._clock = clock or SystemClock()
        self._timeout = settings.render_timeout_seconds
        self._max_chars = settings.render_max_output_bytes
        #: Told which part is compiled or rendered next (a render process shares it with its parent).
        self._on_part = on_part or _ignore_part
        self._html_env = GuardedEnvironment(autoescape=True)
        self._text_env = GuardedEnvironment(autoescape=False)  # subject and text: no escaping
        # The sandbox's globals go into every render's variables (contexts are built shared).
        self._globals: dict[str, Any] = dict(self._text_env.globals)
        # Compiled templates are immutable and thread-safe, so one cache serves every caller.
        self._compile_cached = lru_cache(maxsize=COMPILE_CACHE_SIZE)(self._compile)

    # --- compiling ------------------------------------------------------------------------------

    def compile(self, *, subject: str, html: str | None, text: str | None) -> CompiledTemplate:
        """All parts compiled; a part that does not compile raises ``TemplateSyntaxError``
        naming the field and the line.

        Compiling costs milliseconds, rendering microseconds: the same content (a transactional
        message sent with inline content again and again) is compiled once and remembered.
        """
        if len(subject) + len(html or "") + len(text or "") <= COMPILE_CACHE_MAX_CHARS:
            return self._compile_cached(subject, html, text)
        return self._compile(subject, html, text)

    def _compile(self, subject: str, html: str | None, text: str | None) -> CompiledTemplate:
        html = html if html and html.strip() else None
        text = text if text and text.strip() else None
        if html is None and text is None:
            raise errors.InvalidInput("a template needs an html or a text body", field="html")
        names: set[str] = set()
        compiled_html = (
            None if html is None else self._compile_part(self._html_env, html, "html", names)
        )
        compiled_text = (
            None if text is None else self._compile_part(self._text_env, text, "text", names)
        )
        if compiled_text is None and html is not None:
            self._on_part("text")
            compiled_text = self._derive_text(html)
        return CompiledTemplate(
            subject=self._compile_part(self._text_env, subject, "subject", names),
            html=compiled_html,
            text=compiled_text,
            names=frozenset(names),
        )

    def _derive_text(self, html: str) -> Template | str | None:
        """A text template made once from the HTML *template*, so that a campaign does not convert
        every recipient's rendered HTML again (the conversion costs more than the render).

        Jinja's markup is plain text to the HTML converter and passes through unchanged; an
        attribute's expression (``href="{{ unsubscribe_url }}"``) comes out as the link's
        "(url)". When the markup did not survive intact (a ``<`` inside an expression), there is
        no derived template and each render converts its own HTML instead, as before.
        """
        derived = html_to_text(html)
        if any(derived.count(mark) != html.count(mark) for mark in ("{{", "{%", "{#")):
            return None
        try:
            return self._compile_part(self._text_env, derived, "text", set())
        except errors.TemplateSyntaxError:
            return None

    def _compile_part(
        self, env: GuardedEnvironment, source: str, part: Part, names: set[str]
    ) -> Template | str:
        literal = _literal(source)
        if literal is not None:
            return literal
        self._on_part(part)
        try:
            tree = env.parse(source)
            # Jinja has no way to read a variable by a computed name, so this set is complete.
            names.update(meta.find_undeclared_variables(tree))
            for node in tree.find_all(FORBIDDEN_NODES):
                tag = type(node).__name__.lower().replace("fromimport", "from … import")
                raise errors.TemplateSyntaxError(
                    f"{{% {tag} %}} is not available in templates", field=part, line=node.lineno
                )
            guard_loops(tree)
            return env.from_string(tree)
        except TemplateSyntaxError as exc:
            raise errors.TemplateSyntaxError(exc.message, field=part, line=exc.lineno) from None
        except RecursionError:
            raise errors.TemplateSyntaxError("the template nests too deeply", field=part) from None
        except (MemoryError, RenderInterrupted) as exc:
            raise _exhausted(exc, part) from None

    # --- rendering ------------------------------------------------------------------------------

    def render(
        self,
        template: CompiledTemplate,
        *,
        tenant_id: int,
        recipient: Recipient,
        data: Mapping[str, Any],
        category: str | None,
    ) -> RenderedContent:
        """The mail for one recipient; raises ``RenderError`` naming the part that failed."""
        links = [kind for kind in LINK_KINDS if f"{kind}_url" in template.names]
        variables = self.variables(
            links=links, tenant_id=tenant_id, recipient=recipient, data=data, category=category
        )
        return self.render_variables(template, variables)

    def render_variables(
        self, template: CompiledTemplate, variables: dict[str, Any]
    ) -> RenderedContent:
        """The mail for ``variables`` (made by ``variables``, and taken over: the sandbox's
        globals are added to it); raises ``RenderError`` naming the part that failed."""
        variables.update(self._globals)
        budget = Budget(
            deadline=time.monotonic() + self._timeout,
            spend_left=self._max_chars * SPEND_FACTOR,
            max_value=self._max_chars,
        )
        reset = BUDGET.set(budget)
        try:
            subject = self._render_part(template.subject, variables, "subject").strip()
            if "\r" in subject or "\n" in subject:
                raise errors.RenderError(
                    "the subject must be a single line (it contains a line break)",
                    field="subject",
                )
            html = self._render_part(template.html, variables, "html") if template.html else None
            text = self._render_part(template.text, variables, "text") if template.text else ""
        finally:
            BUDGET.reset(reset)
        if not text.strip():
            text = ""
            if html:
                self._on_part("text")
                try:
                    text = html_to_text(html)
                except (MemoryError, RenderInterrupted) as exc:
                    raise _exhausted(exc, "text") from None
        return RenderedContent(subject=subject, html=html, text=text)

    def variables(
        self,
        *,
        links: Collection[tokens.TokenKind],
        tenant_id: int,
        recipient: Recipient,
        data: Mapping[str, Any],
        category: str | None,
    ) -> dict[str, Any]:
        """What a template sees besides the sandbox's globals, with a signed URL for each kind in
        ``links``: plain data, so that it can be sent to a render process as it is."""
        variables = {**data, "data": data}
        variables.update(
            email=recipient.email,
            name=recipient.name,
            first_name=recipient.first_name,
            last_name=recipient.last_name,
            attributes=recipient.attributes,
        )
        variables[LOCAL_KEY] = (recipient.timezone, recipient.locale)
        message_id = recipient.message_id
        if links and message_id is None:
            # A preview, or the check at accept: no message, so no working link (tokens.py).
            for kind in links:
                variables[f"{kind}_url"] = tokens.preview_url(self._public_url, kind)
        elif links and message_id is not None:
            now = self._clock.now()
            for kind in links:
                token = tokens.make_token(
                    self._secret,
                    kind=kind,
                    tenant_id=tenant_id,
                    message_id=message_id,
                    contact_created=recipient.contact_created,
                    category=category,
                    now=now,
                )
                variables[f"{kind}_url"] = f"{self._public_url}/{_LINK_PATHS[kind]}/{token}"
        return variables

    def _render_part(self, template: Template | str, variables: dict[str, Any], part: Part) -> str:
        if isinstance(template, str):
            output = template
        else:
            self._on_part(part)
            try:
                # shared=True: the variables are used as they are, not copied once per part.
                output = template.environment.concat(
                    template.root_render_func(template.new_context(variables, shared=True))
                )
            except errors.TidingsError:
                raise
            except (MemoryError, RenderInterrupted) as exc:
                raise _exhausted(exc, part) from None
            except Exception as exc:
                raise errors.RenderError(_describe(exc, template), field=part) from None
        if len(output) > self._max_chars or (
            not output.isascii() and len(output.encode()) > self._max_chars
        ):
            raise errors.RenderError(
                f"the rendered {part} is larger than {self._max_chars} bytes", field=part
            )
        return output


def with_event(data: Mapping[str, Any], event_at: datetime | None) -> Mapping[str, Any]:
    """The template data of a message, with its event's time when it has one (a reminder)."""
    return data if event_at is None else {**data, "event_at": event_at}


def _ignore_part(part: Part) -> None:
    pass


def _exhausted(exc: MemoryError | RenderInterrupted, part: Part) -> ResourceExhausted:
    """A hard limit of the render process, named for the tenant: its process is replaced."""
    if isinstance(exc, MemoryError):
        return ResourceExhausted("the template needs too much memory", field=part)
    return ResourceExhausted(str(exc), field=part)


def wanted_links(*sources: str | None) -> list[tokens.TokenKind]:
    """The link kinds a template may print, from its sources alone: a variable's name is always
    spelled out where it is read (Jinja has no lookup by a computed name), so this is a superset
    of what compiling would find, without compiling."""
    return [kind for kind in LINK_KINDS if any(s and f"{kind}_url" in s for s in sources)]


def _literal(source: str) -> str | None:
    """What Jinja would print for ``source`` when it cannot contain template syntax (no ``{``
    at all), else None.

    Compiling costs about 0.3 ms a part, rendering microseconds; a transactional message with
    inline content the caller already personalised ("Your code is 481 516") is unique, so the
    compile cache never helps it, and it is compiled on accept and again at send. Jinja's lexer
    does two things to plain text: line breaks become ``\n``, and one trailing line break is
    dropped (``keep_trailing_newline=False``). A property test holds this to Jinja's output.
    """
    if "{" in source:
        return None
    text = source.replace("\r\n", "\n").replace("\r", "\n")
    return text[:-1] if text.endswith("\n") else text


def _describe(exc: Exception, template: Template) -> str:
    """A message for the tenant: what went wrong and, when known, on which line."""
    if isinstance(exc, (RenderLimitExceeded, UndefinedError)):
        message = str(exc)
    elif isinstance(exc, SecurityError):
        message = f"not allowed in a template: {exc}"
    elif isinstance(exc, TemplateError):
        message = exc.message or type(exc).__name__
    elif isinstance(exc, RecursionError):
        message = "the template recurses too deeply"
    elif isinstance(exc, MemoryError):
        message = "the template needs too much memory"
    else:
        message = f"{type(exc).__name__}: {exc}"
    line = _template_line(exc.__traceback__, template)
    return f"{message} (line {line})" if line else message


def _template_line(tb: TracebackType | None, template: Template) -> int | None:
    """The template line of the innermost frame that ran the template's generated code."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_globals.get("__jinja_template__") is template:
            line = template.get_corresponding_lineno(tb.tb_lineno)
        tb = tb.tb_next
    return line
