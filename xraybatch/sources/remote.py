"""Read one file's bytes from an fsspec URL, on the worker that decodes it.

Chunk tasks carry URLs, never bytes: each worker opens the object store itself (fsspec caches
one filesystem instance per set of options), so a Dask cluster needs no shared disk. The
storage options of the run are set for the task by :func:`source_options`, which keeps the
per-image decoder's signature unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from .listing import remote_fs

# A context variable, not a global: threads of one worker may run tasks of different runs.
_OPTIONS: ContextVar[dict | None] = ContextVar("xraybatch_source_options", default=None)


@contextmanager
def source_options(options: dict | None) -> Iterator[None]:
    """Use ``options`` (fsspec storage options) for the URLs read inside the block."""
    token = _OPTIONS.set(dict(options or {}))
    try:
        yield
    finally:
        _OPTIONS.reset(token)


def read_url(url: str) -> bytes:
    """The whole object at ``url``; errors become :class:`xraybatch.decode.ImageError` codes.

    Examples
    --------
    >>> import fsspec
    >>> fsspec.filesystem("memory").pipe_file("/doc/a.bin", b"abc")
    >>> read_url("memory://doc/a.bin")
    b'abc'
    >>> read_url("memory://doc/none.bin")
    Traceback (most recent call last):
    ...
    xraybatch.readers.base.ImageError: file not found: memory://doc/none.bin
    """
    from ..readers.base import ImageError  # the reason codes are the decoder's

    fs, path = remote_fs(url, _OPTIONS.get())
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise ImageError("missing", f"file not found: {url}") from None
    except (OSError, PermissionError) as e:  # includes fsspec's wrapped HTTP/S3 errors
        raise ImageError("unreadable", f"{e}: {url}") from None
