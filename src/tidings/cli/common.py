"""What every CLI command shares: the consoles, turning errors into a message and an exit code,
opening the runtime and one committed unit of work, and the options of commands that can also
talk to a remote API.

A command never shows a traceback for a mistake the user can fix: service errors, settings that
cannot work, an unreachable database or one whose schema is behind all end as one line on standard
error and exit code 1 (Typer's own usage errors exit with 2).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from tidings.cli.remote import RemoteApi, RemoteError
from tidings.config import Settings
from tidings.db.engine import pending_migrations, transaction
from tidings.errors import InvalidInput, TidingsError
from tidings.runtime import Runtime, build_runtime
from tidings.scheduling.windows import SendWindow, parse_send_window_text
from tidings.services import tenants

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

TenantOption = Annotated[
    str | None,
    typer.Option(
        "--tenant", help="Tenant name: act on the database directly (TIDINGS_DATABASE_URL)."
    ),
]
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="TIDINGS_URL",
        help="Base URL of a Tidings API, e.g. http://127.0.0.1:8000: act through it instead.",
        show_default=False,
    ),
]
KeyOption = Annotated[
    str | None,
    typer.Option("--key", envvar="TIDINGS_API_KEY", help="API key for --url.", show_default=False),
]
SendWindowOption = Annotated[
    str | None,
    typer.Option(
        "--send-window",
        help="Only start sending in these local hours: 'HH:MM-HH:MM [DAYS] [ZONE]', e.g. "
        "'09:00-17:00 mon-fri contact' or '22:00-06:00 sat,sun Europe/Berlin'. DAYS: days the "
        "window opens on (mon … sun, ranges and commas; every day when left out); an end before "
        "the start closes the next day. ZONE: an IANA name, or 'contact' (the default): each "
        "contact's own zone, else the tenant's, else UTC. Or the API's JSON object.",
        show_default=False,
    ),
]
DataOption = Annotated[
    list[str] | None,
    typer.Option(
        "--data",
        help="Template data, repeatable: key=value (text) or key:=JSON (number, list, object).",
        show_default=False,
    ),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` as an error; raise the returned ``Exit`` to end with ``code``."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "TIDINGS_" + "_".join(str(p) for p in first["loc"]).upper()
        raise fail(f"{name}: {first['msg']}") from None


def database_problem(exc: SQLAlchemyError, runtime: Runtime | None = None) -> str:
    """One readable line for a database error: what failed, where, and the driver's reason."""
    where = f" at {runtime.engine.url.render_as_string(hide_password=True)}" if runtime else ""
    reason = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    first_line = (
        str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    )
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return f"lost the connection to the database{where}: {first_line}"
    if type(exc).__name__ in {"OperationalError", "InterfaceError"}:
        return f"cannot use the database{where}: {first_line}"
    return f"database error{where}: {first_line}"


@contextmanager
def open_runtime(*, check_schema: bool = True) -> Iterator[Runtime]:
    """The runtime from the environment; with ``check_schema``, the database must answer and be current."""
    settings = load_settings()
    try:
        runtime = build_runtime(settings)
    except TidingsError as exc:
        raise fail(exc.message) from None
    except SQLAlchemyError as exc:
        raise fail(database_problem(exc)) from None
    except ValueError as exc:  # a URL the driver cannot parse, e.g. a port that is not a number
        raise fail(f"TIDINGS_DATABASE_URL cannot be used: {exc}") from None
    try:
        if check_schema:
            _check_database(runtime)
        yield runtime
    except SQLAlchemyError as exc:
        raise fail(database_problem(exc, runtime)) from None
    finally:
        runtime.close()


def _check_database(runtime: Runtime) -> None:
    with runtime.engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    if pending_migrations(runtime.engine):
        raise fail("the database schema is not current: run `tidings db upgrade` first")


@contextmanager
def unit_of_work(runtime: Runtime) -> Iterator[Session]:
    """One committed transaction; service errors become a message and exit code 1."""
    try:
        with transaction(runtime.sessions) as session:
            yield session
    except TidingsError as exc:
        raise fail(exc.message) from None


def tenant_id_of(session: Session, name: str) -> int:
    return tenants.get_tenant_by_name(session=session, name=name).id


def parse_data(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs (values are text) and ``key:=JSON`` pairs (typed values)."""
    data: dict[str, Any] = {}
    for item in items or []:
        key, typed, value = item.partition(":=")
        if typed and "=" not in key:
            try:
                data[key.strip()] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise typer.BadParameter(
                    f"{item!r}: the value after := must be JSON ({exc.msg})", param_hint="--data"
                ) from None
            continue
        key, equals, value = item.partition("=")
        if not equals:
            raise typer.BadParameter(f"{item!r} is not key=value", param_hint="--data")
        data[key.strip()] = value
    if "" in data:
        raise typer.BadParameter("a key is empty", param_hint="--data")
    return data


def parse_send_window_option(value: str | None) -> SendWindow | None:
    """``--send-window`` as ``scheduling.windows.parse_send_window_text`` reads it."""
    if value is None:
        return None
    try:
        return parse_send_window_text(value, field="--send-window")
    except InvalidInput as exc:
        raise typer.BadParameter(exc.message, param_hint="--send-window") from None


def parse_time(value: str | None, *, option: str) -> datetime | None:
    """An ISO 8601 time with its zone (``2030-01-31T09:00:00+01:00`` or ``…Z``)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO 8601 time such as 2030-01-31T09:00:00Z", param_hint=option
        ) from None
    if parsed.tzinfo is None:
        raise typer.BadParameter(
            f"{value!r} needs a time zone, e.g. 2030-01-31T09:00:00Z", param_hint=option
        )
    return parsed


@dataclass(frozen=True)
class Target:
    """Where a command acts: this machine's database for a tenant, or a remote API with a key."""

    tenant: str | None = None
    remote: RemoteApi | None = None


def choose_target(tenant: str | None, url: str | None, key: str | None) -> Target:
    """``--tenant`` wins (the database); else ``--url`` and ``--key`` (the API); else an error."""
    if tenant is not None:
        return Target(tenant=tenant)
    if url is None:
        raise fail("give --tenant NAME (this machine's database) or --url and --key (an API)", 2)
    if not key:
        raise fail("--url needs --key (or TIDINGS_API_KEY)", 2)
    try:
        return Target(remote=RemoteApi(url, key))
    except RemoteError as exc:
        raise fail(exc.message, 2) from None


@contextmanager
def remote_errors() -> Iterator[None]:
    """An API's refusal or an unreachable server becomes a message and exit code 1."""
    try:
        yield
    except RemoteError as exc:
        raise fail(exc.message) from None
