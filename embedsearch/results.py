"""What writes return, with LanceDB's (0.40) names and fields."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AddResult:
    """``table.add``: the version it committed."""

    version: int


@dataclass(frozen=True)
class UpdateResult:
    """``table.update``: rows changed, and the version committed."""

    rows_updated: int
    version: int


@dataclass(frozen=True)
class DeleteResult:
    """``table.delete``: rows removed, and the version committed."""

    num_deleted_rows: int
    version: int


@dataclass(frozen=True)
class MergeResult:
    """``merge_insert(...).execute``: what the upsert did to ``num_rows`` source rows, as one
    commit (``num_attempts`` is 1: the store retries lost commit races itself)."""

    version: int
    num_updated_rows: int
    num_inserted_rows: int
    num_deleted_rows: int
    num_attempts: int
    num_rows: int
