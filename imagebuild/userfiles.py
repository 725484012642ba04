"""Files a user names on the command line (a key, a vulnerability database), read as one open
file that is checked and then read: nothing can swap the path in between, and a FIFO or a
device (which would block or never end) is refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def read_regular(path: Path, limit: int) -> bytes:
    """The file's bytes; ValueError saying why it is not a regular file of at most `limit`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise ValueError(e.strerror or "cannot be read") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > limit:
            raise ValueError(f"{st.st_size} bytes, more than {limit}")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:  # it grew after the check
            raise ValueError(f"more than {limit} bytes")
        return data
    finally:
        os.close(fd)
