"""Settings from ``TIDINGS_*`` environment variables, built once at the entry point and passed down.

The variable names are a contract with users' scripts (DESIGN.md, "Configuration"): add, never rename.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tidings.errors import ConfigurationError
from tidings.private_files import create_private_file, make_private_dir

SECRET_FILE_NAME = "secret_key"
#: Secrets that appear in examples and must never sign real tokens.
PLACEHOLDER_SECRETS = frozenset({"changeme", "change-me", "secret", "changethis", "xxx", ""})
MIN_SECRET_LENGTH = 32  # characters


class Settings(BaseSettings):
    """Everything configurable; tests build ``Settings(...)`` directly instead of touching the environment."""

    model_config = SettingsConfigDict(env_prefix="TIDINGS_", extra="ignore")

    data_dir: Path = Path(".tidings")
    database_url: str | None = None  # default: sqlite file in data_dir
    #: ``transaction`` when ``database_url`` points at a pooler in transaction mode (PgBouncer):
    #: consecutive transactions may run on different server connections, so nothing may rely on
    #: a server session (no server-side prepared statements, no LISTEN through it).
    database_pooling: Literal["session", "transaction"] = "session"
    #: A direct PostgreSQL URL for the workers' LISTEN (default: ``database_url``). Behind a
    #: transaction pooler without one, workers find new work by polling only.
    database_listen_url: str | None = None
    #: A PostgreSQL hot standby (streaming replica) of ``database_url`` that serves the dashboard's
    #: pages and the campaign status reads (see ``db/replica.py``); unset, everything reads the
    #: primary. ``database_pooling`` applies to it as well.
    database_replica_url: str | None = None
    transport_url: str | None = None  # default: outbox maildir in data_dir
    secret_key: str | None = None  # default: generated once, kept in data_dir
    public_url: str = "http://127.0.0.1:8000"
    from_address: str = Field(
        default="Tidings <noreply@localhost>", validation_alias="TIDINGS_FROM"
    )

    retry_base_seconds: float = Field(default=300.0, gt=0)
    retry_max_seconds: float = Field(default=3600.0, gt=0)
    message_ttl_seconds: float = Field(default=432000.0, gt=0)
    lease_seconds: float = Field(default=30.0, gt=0)
    #: A message whose lease expired this many times (it keeps killing workers) goes to dead letters.
    max_lease_expiries: int = Field(default=5, ge=1)
    poll_seconds: float = Field(default=1.0, gt=0)

    max_body_bytes: int = Field(default=1_000_000, gt=0)  # JSON request bodies
    max_import_bytes: int = Field(default=200_000_000, gt=0)  # CSV / NDJSON uploads
    max_attributes_bytes: int = Field(default=16_384, gt=0)  # a contact's attributes, as JSON
    #: The attachments of one message (or campaign, or template) together, decoded. The JSON
    #: bodies that may carry them are allowed this much more, as base64 (``api/body_limits.py``).
    max_attachment_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    #: Hard bounds of one render, enforced on the render process (``rendering/pool.py``): CPU
    #: seconds, and memory the render may take beyond the process's own.
    render_timeout_seconds: float = Field(default=2.0, gt=0)
    render_max_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    #: The largest rendered part (subject, html or text) a template may produce.
    render_max_output_bytes: int = Field(default=1_000_000, gt=0)
    #: Render processes per Tidings process (templates never render in the serving process).
    render_processes: int = Field(default=2, ge=1, le=32)

    #: Reputation guardrails: a campaign pauses itself when, after ``guardrail_min_sample`` attempts,
    #: its hard-bounce or complaint rate passes these fractions (0.003 is Gmail's complaint ceiling).
    guardrail_min_sample: int = Field(default=200, ge=1)
    guardrail_bounce_rate: float = Field(default=0.05, gt=0, le=1)
    guardrail_complaint_rate: float = Field(default=0.003, gt=0, le=1)
    #: Signing secret of the Resend (Svix-style) inbound webhook, ``whsec_...``; unset refuses the endpoint.
    resend_webhook_secret: str | None = None
    #: Allow tenants' webhook endpoints on private, loopback and link-local addresses (tests, intranets).
    webhook_allow_private: bool = False
    #: Allow tenants' own transports (SMTP relays, Resend hosts) on private, loopback and
    #: link-local addresses (tests, an intranet relay); off, a tenant cannot aim us at our own network.
    transport_allow_private: bool = False
    #: Hosts (exact names, or ``.example.com`` for a domain and its subdomains) a tenant's own
    #: transport may name; empty allows any public host.
    transport_allowed_hosts: list[str] = Field(default_factory=list)

    #: ``host:port`` (or ``host``) of the DNS resolver that checks sender domains' records;
    #: unset: the system's.
    dns_resolver: str | None = None
    #: Refuse (422) a From whose domain is not a verified sender domain of the tenant; otherwise
    #: such mail goes unsigned, with a warning event.
    require_verified_from: bool = False
    #: What the suggested SPF record includes (your relay's SPF domain, e.g. ``_spf.relay.example``);
    #: unset: the suggestion authorises the domain's MX hosts only.
    spf_include: str | None = None

    #: Bodies (subject, html, text, data) of messages that ended, and events, older than this are
    #: purged by the workers' maintenance (``queue/retention.py``); message rows stay, so campaign
    #: figures stay right. 0 turns the purge off.
    retention_days: int = Field(default=180, ge=0)

    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL; ``postgresql://`` is pinned to the psycopg 3 driver we ship."""
        url = self.database_url or f"sqlite:///{(self.data_dir / 'tidings.db').resolve()}"
        return _pinned(url, "TIDINGS_DATABASE_URL")

    def listen_url(self) -> str | None:
        """Where a worker LISTENs (a libpq URL), or None: not PostgreSQL, or only through a
        transaction pooler, which cannot deliver notifications to a client between transactions."""
        if self.database_listen_url is not None:
            url = _pinned(self.database_listen_url, "TIDINGS_DATABASE_LISTEN_URL")
        elif self.database_pooling == "transaction":
            return None
        else:
            url = self.resolved_database_url()
        if not url.startswith("postgresql+psycopg://"):
            return None
        return "postgresql://" + url.removeprefix("postgresql+psycopg://")

    def replica_url(self) -> str | None:
        """The read replica's SQLAlchemy URL, or None when there is none.

        Refused, not ignored, with SQLite as the primary: SQLite has no replicas, and an operator
        who set one expects reads to leave the primary; better to say so at start-up than to
        serve every read from the primary while the configuration claims otherwise."""
        if self.database_replica_url is None or not self.database_replica_url.strip():
            return None
        field = "TIDINGS_DATABASE_REPLICA_URL"
        if not self.resolved_database_url().startswith("postgresql+psycopg://"):
            raise ConfigurationError(
                f"{field} needs a PostgreSQL primary: SQLite has no replicas; unset it, or move"
                " TIDINGS_DATABASE_URL to PostgreSQL",
                field=field,
            )
        url = _pinned(self.database_replica_url.strip(), field)
        if not url.startswith("postgresql+psycopg://"):
            raise ConfigurationError(
                f"{field} must be a postgresql:// URL of a standby of the primary", field=field
            )
        return url

    def resolved_transport_url(self) -> str:
        return self.transport_url or f"outbox://{(self.data_dir / 'outbox').resolve()}"

    def resolved_secret_key(self) -> str:
        """The signing secret: given, or generated once and kept (mode 0600) in the data directory."""
        if self.secret_key is not None:
            if (
                self.secret_key.strip().lower() in PLACEHOLDER_SECRETS
                or len(self.secret_key) < MIN_SECRET_LENGTH
            ):
                raise ConfigurationError(
                    f"TIDINGS_SECRET_KEY must be a random string of at least {MIN_SECRET_LENGTH} characters",
                    field="TIDINGS_SECRET_KEY",
                )
            return self.secret_key
        path = self.data_dir / SECRET_FILE_NAME
        if not path.exists():
            make_private_dir(self.data_dir)
            fd = create_private_file(path)  # None: another process is writing it
            if fd is not None:
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_urlsafe(48))
        value = path.read_text().strip()
        if len(value) < MIN_SECRET_LENGTH:
            raise ConfigurationError(
                f"the secret in {path} is too short; delete it to generate a new one"
            )
        return value


def _pinned(url: str, variable: str) -> str:
    """A database URL with ``postgresql://`` pinned to the psycopg 3 driver we ship."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if not url.startswith(("sqlite:///", "postgresql+psycopg://")):
        raise ConfigurationError(
            f"{variable} must start with sqlite:/// or postgresql://", field=variable
        )
    return url
