"""Files that hold contact data or secrets (the SQLite database and its ``-wal``/``-shm``, the
generated secret key, the outbox maildir): created for their owner alone whatever the umask, and
a warning at start-up when an existing one is open to others.

Modes are set when a file or directory is made, before anything is written into it: ``os.open`` /
``os.mkdir`` with the mode (the umask can only take bits away, so it is never wider), then an
explicit ``chmod`` (so a strict umask such as 0277 does not leave the owner unable to write).
SQLite creates ``-wal`` and ``-shm`` itself with the database file's own mode (``unixOpen`` copies
it and ``fchmod``s to it), so creating the database file 0600 before SQLite opens it covers them.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

PRIVATE_DIR_MODE = 0o700  # rwx for the owner only
PRIVATE_FILE_MODE = 0o600  # rw for the owner only
OPEN_TO_OTHERS = 0o077  # any group or other permission bit

log = logging.getLogger("tidings.files")


def make_private_dir(path: Path) -> None:
    """Create ``path`` and any missing parent with mode 0700; existing directories are left as
    they are (``warn_if_open_to_others`` reports them)."""
    missing: list[Path] = []
    current = path
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # another process made it at the same moment, and set its mode
        os.chmod(directory, PRIVATE_DIR_MODE)


def create_private_file(path: Path) -> int | None:
    """Create ``path`` empty with mode 0600 and return it open for writing, or None when it
    already exists (``O_EXCL``: of two processes starting at once, exactly one creates it)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    except FileExistsError:
        return None
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def warn_if_open_to_others(paths: Iterable[Path]) -> list[Path]:
    """Log a warning for each existing path that its group or others may access; returns them."""
    wide: list[Path] = []
    for path in paths:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:  # not there (yet), or not ours to look at: nothing to say
            continue
        if not mode & OPEN_TO_OTHERS:
            continue
        wanted = PRIVATE_DIR_MODE if path.is_dir() else PRIVATE_FILE_MODE
        log.warning(
            "%s has mode %04o: it holds contact data or secrets and should be %04o (chmod %o %s)",
            path,
            mode,
            wanted,
            wanted,
            path,
        )
        wide.append(path)
    return wide
