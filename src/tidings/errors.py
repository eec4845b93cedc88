"""One error hierarchy for every layer below the entry points; ``api/errors.py`` maps it to HTTP.

::

    TidingsError
    ├── ConfigurationError        settings that cannot work (bad URL, placeholder secret)
    ├── NotFound                  no such row *for this tenant* (another tenant's row is the same)
    ├── PermissionDenied          the key's role may not do this
    ├── Unauthenticated           no key, unknown key, revoked key
    ├── Conflict                  the change clashes with stored state (duplicate name, wrong status)
    ├── InvalidInput              a field's value is wrong; ``field`` names it
    │   ├── TemplateSyntaxError   a template does not compile; ``line`` says where
    │   ├── RenderError           a template failed for one recipient (undefined, too slow, too big)
    │   └── InvalidToken          an unsubscribe/preferences link that is forged, altered or expired
    └── PayloadTooLarge           a body over the configured size

Every error carries a stable ``code`` for clients and a human ``message``; the class docstring is
the default message so that raising sites stay short.
"""

from __future__ import annotations


class TidingsError(Exception):
    """Something went wrong in Tidings."""

    code = "error"

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        self.field = field
        super().__init__(self.message)


class ConfigurationError(TidingsError):
    """The configuration cannot work."""

    code = "configuration_error"


class NotFound(TidingsError):
    """Not found."""

    code = "not_found"


class PermissionDenied(TidingsError):
    """This API key's role does not allow that."""

    code = "forbidden"


class Unauthenticated(TidingsError):
    """A valid API key is required (Authorization: Bearer <key>)."""

    code = "unauthenticated"


class Conflict(TidingsError):
    """That clashes with the stored state."""

    code = "conflict"


class InvalidInput(TidingsError):
    """A value is not valid."""

    code = "invalid"


class TemplateSyntaxError(InvalidInput):
    """The template does not compile."""

    code = "template_syntax"

    def __init__(
        self, message: str | None = None, *, field: str | None = None, line: int | None = None
    ) -> None:
        super().__init__(message, field=field)
        self.line = line


class RenderError(InvalidInput):
    """The template could not be rendered for this recipient."""

    code = "render_failed"


class InvalidToken(InvalidInput):
    """This link is not valid."""

    code = "invalid_token"

    def __init__(self, message: str | None = None, *, field: str | None = "token") -> None:
        super().__init__(message, field=field)


class PayloadTooLarge(TidingsError):
    """The request body is larger than allowed."""

    code = "payload_too_large"
