"""A table of the store's data root, as a job reaches it: its URI, store options and bindings."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import lance

from embedsearch.contract.errors import TableNotFound
from store_service.catalog import check_name, lance_message
from store_service.settings import StoreSettings
from store_service.storage import Root, storage_options_from_env


@dataclass
class TableRef:
    """Table ``name`` under the data root ``root`` (a directory, or s3://bucket/prefix), with
    the object-store options the store would use: AWS_* variables, then STORE_STORAGE_OPTIONS."""

    root: str
    name: str
    storage_options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, root: str, name: str) -> TableRef:
        overrides = StoreSettings(data_root=root).storage_options
        return cls(root, check_name(name), storage_options_from_env(os.environ, overrides))

    @property
    def uri(self) -> str:
        return Root(self.root, self.storage_options).table_uri(self.name)

    def open(self, version: int | None = None) -> lance.LanceDataset:
        """The table's Lance dataset (the latest version, or ``version``)."""
        try:
            return lance.dataset(self.uri, version=version, storage_options=self.storage_options)
        except (ValueError, OSError) as exc:
            raise TableNotFound(
                f"table {self.name!r} is not under {self.root}: {lance_message(exc)}; create it "
                "first (connect(...).create_table with its schema and embedding functions)",
                table=self.name,
            ) from exc
