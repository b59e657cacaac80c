"""Where a store lives: a local path or an fsspec URL, and the one error type of stores.

Small and picklable, so that chunk tasks on any worker open the store themselves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import zarr


class StoreError(RuntimeError):
    """A store that cannot be created, resumed or read as asked (reported in one line)."""


@dataclass(frozen=True)
class StoreRef:
    """Where a store lives: a local path or an fsspec URL, plus its storage options.

    It is small and picklable, so chunk tasks on any worker can open the store themselves.
    """

    url: str
    storage_options: dict = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    @property
    def local_path(self) -> str:
        return self.url.removeprefix("file://")

    def open(self, mode: str = "r", **kwargs: Any) -> zarr.Group:
        """The root group; ``kwargs`` go to ``zarr.open_group`` (e.g. ``attributes``)."""
        if self.is_local:
            return zarr.open_group(self.local_path, mode=mode, zarr_format=3, **kwargs)
        self._check_backend()
        return zarr.open_group(self.url, mode=mode, zarr_format=3,
                               storage_options=self.storage_options or None, **kwargs)

    def fs(self):
        """The fsspec filesystem and path of a remote store."""
        import fsspec

        self._check_backend()
        return fsspec.core.url_to_fs(self.url, **self.storage_options)

    def _check_backend(self) -> None:
        """Name what to install when fsspec has no backend for the URL's protocol."""
        import fsspec

        protocol = self.url.split("://", 1)[0]
        try:
            fsspec.get_filesystem_class(protocol)
        except ImportError as e:
            hint = ("s3fs: pip install 'xraybatch[s3]'" if protocol in ("s3", "s3a")
                    else f"an fsspec backend ({e})")
            raise ImportError(f"{protocol}:// stores need {hint}") from None
        except ValueError:
            raise StoreError(f"unknown storage protocol {protocol}:// in {self.url}") from None

    def exists(self) -> bool:
        if self.is_local:
            return os.path.exists(self.local_path)
        fs, path = self.fs()
        return fs.exists(f"{path}/zarr.json")
