"""Read-ahead for the streaming passes: ask the kernel to start reading the next tensors'
bytes while the current pair is computed, so disk reads overlap the arithmetic.

Memory-mapped reads fault pages in synchronously, with a small read-ahead window; a
``posix_fadvise(WILLNEED)`` on the coming byte ranges starts the reads at once and returns
(the pages land in the page cache, never in anonymous memory). The calls run on one
background thread, since the kernel may block while it queues a large range.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from deltalens.checkpoints.sources import TensorSource


class ReadAhead:
    """Issues WILLNEED for tensors of one or more sources, one background call per tensor."""

    def __init__(self, *sources: TensorSource):
        self._sources = sources
        self._fds: dict[str, int] = {}
        self._done: set[tuple[int, str]] = set()
        usable = hasattr(os, "posix_fadvise")
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="deltalens-readahead") if usable else None

    def request(self, key: str) -> None:
        """Start reading ``key``'s bytes in every source that stores them in a plain file."""
        if self._pool is None:
            return
        for i, src in enumerate(self._sources):
            where = src.byte_range(key)
            if where is not None and (i, key) not in self._done:
                self._done.add((i, key))
                self._pool.submit(self._advise, *where)

    def _advise(self, path, offset: int, length: int) -> None:
        try:
            fd = self._fds.get(str(path))
            if fd is None:
                fd = self._fds[str(path)] = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # a hint only: reading still works without it

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
