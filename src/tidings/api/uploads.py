"""Large uploads (contact imports): read to a temporary file before the route's handler runs.

Why a file, and read whole first: the process's memory stays flat whatever the upload's size; the
import's transaction begins only once the whole file is here, so a slow client never holds
SQLite's write lock, a PostgreSQL connection or a request-session slot while it sends; and the
file has no name (``O_TMPFILE``), so it is gone once closed, on success, on an error, when the
client goes away, even when the process is killed.

Routes that take an ``UploadDep`` (the API's raw body) or a ``FormUploadDep`` (the dashboard's
form) are the only ones capped at ``TIDINGS_MAX_IMPORT_BYTES`` instead of
``TIDINGS_MAX_BODY_BYTES`` (see ``BodySizeLimit`` in ``app.py``).
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from typing import IO, Annotated

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.routing import BaseRoute

from tidings.api.deps import RuntimeDep, depends_on
from tidings.errors import InvalidInput

SPOOL_WRITE_BYTES = 1024 * 1024  # bytes gathered before each write to the file (a thread hop)
UPLOAD_READ_BYTES = 256 * 1024  # bytes per read when the handler parses the file


async def spooled_upload(request: Request, runtime: RuntimeDep) -> AsyncIterator[IO[bytes]]:
    """The request body in an unnamed temporary file in the data directory, rewound.

    Declare it after the principal (a key without the role never uploads) and before the session
    (no transaction, connection or session slot is held while the client sends).
    """
    directory = runtime.settings.data_dir
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=directory) as spool:
        pending = bytearray()
        async for chunk in request.stream():  # BodySizeLimit cuts it off past the cap
            pending += chunk
            if len(pending) >= SPOOL_WRITE_BYTES:
                await run_in_threadpool(spool.write, pending)
                pending.clear()
        await run_in_threadpool(spool.write, pending)
        spool.seek(0)
        yield spool


#: The upload as a file; closed (and so deleted) once the handler returns.
UploadDep = Annotated[IO[bytes], Depends(spooled_upload, scope="function")]


async def form_upload(request: Request) -> AsyncIterator[UploadFile]:
    """The ``file`` of a browser's multipart form (Starlette keeps a file part over 1 MB in an
    unnamed temporary file), closed once the handler returns.

    A route taking it has no ``File()`` parameter, which FastAPI would read before any dependency:
    declare it after the dependency that checks who is signed in, and before the session.
    """
    form = await request.form()  # or the form the CSRF check has already read
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise InvalidInput("choose a file to import", field="file")
        yield file
    finally:
        await form.close()


#: The form's file; closed (and so deleted) once the handler returns.
FormUploadDep = Annotated[UploadFile, Depends(form_upload, scope="function")]


def takes_upload(route: BaseRoute) -> bool:
    """Whether ``route`` reads an upload (and so gets the import cap)."""
    return isinstance(route, APIRoute) and (
        depends_on(route.dependant, spooled_upload) or depends_on(route.dependant, form_upload)
    )
