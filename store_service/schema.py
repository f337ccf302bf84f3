"""Schema evolution and table statistics: add, alter and drop columns through pylance's own
APIs, and LanceDB's ``stats()``. Knows nothing of gRPC or of embeddings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lance
import numpy as np
import pyarrow as pa

from embedsearch.contract.errors import InvalidArgument, InvalidSchema
from embedsearch.contract.values import FragmentLengths, TableStatistics
from store_service.catalog import TableCatalog, WriteResult, _check_schema

# A fragment with fewer physical rows than this is "small" in LanceDB's stats().
SMALL_FRAGMENT_ROWS = 100_000


@dataclass
class Alteration:
    """One column change (LanceDB's alter_columns dict); None keeps what is there."""

    path: str
    rename: str | None = None
    nullable: bool | None = None
    data_type: pa.DataType | None = None


@dataclass
class MetadataUpdate:
    """Schema metadata keys to set and to remove in the same write as a column change."""

    set: dict[str, str] = field(default_factory=dict)
    remove: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.set or self.remove)


def _field_at(schema: pa.Schema, path: str) -> pa.Field | None:
    """The field at a dot-separated path ("a.b" inside struct "a"), or None."""
    parts = path.split(".")
    if parts[0] not in schema.names:
        return None
    found = schema.field(parts[0])
    for part in parts[1:]:
        if not pa.types.is_struct(found.type) or found.type.get_field_index(part) < 0:
            return None
        found = found.type.field(part)
    return found


def _changed(catalog: TableCatalog, name: str, what: str, action: Any) -> WriteResult:
    """Commit a schema change; what this store caches per column of the table goes."""
    _, after = catalog.commit(name, what, action)
    catalog.exact.forget(name)
    return WriteResult(version=after.version)


def _changed_with_metadata(
    catalog: TableCatalog,
    name: str,
    what: str,
    change: Callable[[lance.LanceDataset], Any],
    metadata: MetadataUpdate | None,
) -> WriteResult:
    """:func:`_changed` of ``change(dataset)`` and then, on the same handle, of the schema
    metadata update."""

    def action(dataset: lance.LanceDataset) -> lance.LanceDataset:
        change(dataset)
        if metadata:
            values: dict[str, str | None] = {key: None for key in metadata.remove}
            values.update(metadata.set)
            dataset.update_schema_metadata(values)
        return dataset

    return _changed(catalog, name, what, action)


def _check_known(schema: pa.Schema, paths: list[str]) -> None:
    unknown = [path for path in paths if _field_at(schema, path) is None]
    if unknown:
        raise InvalidSchema(f"unknown column(s) {unknown}; the table has {schema.names}")


def _current(catalog: TableCatalog, name: str, fingerprint: str) -> lance.LanceDataset:
    """Table ``name`` at its latest version, checked against the caller's fingerprint."""
    current = catalog.dataset(name)
    catalog.check_fingerprint(name, current, fingerprint)
    return current


def add_columns(
    catalog: TableCatalog,
    name: str,
    expressions: list[tuple[str, str]],
    schema: pa.Schema | None,
    fingerprint: str = "",
) -> WriteResult:
    """Add columns computed by SQL expressions, or all-null columns of ``schema``, in one commit.

    >>> add_columns(catalog, "docs", [("doubled", "price * 2")], None)  # doctest: +SKIP
    """
    current = _current(catalog, name, fingerprint)
    if bool(expressions) == bool(schema is not None and len(schema)):
        raise InvalidArgument(
            "add_columns needs new columns: a dict of name -> SQL expression, or an Arrow "
            "schema (fields) of all-null columns, not both"
        )
    new = [n for n, _ in expressions] if expressions else list(schema.names)  # type: ignore[union-attr]
    existing = [n for n in new if n in current.schema.names]
    if existing:
        raise InvalidSchema(
            f"column(s) {existing} already exist in table {name!r}: pick other names, or "
            "alter_columns to rename"
        )
    if expressions:
        for column, expression in expressions:
            catalog.limits.check(expression, f"expression for new column {column!r}")
        combined = pa.schema([*current.schema, *(pa.field(n, pa.null()) for n in new)])
        _check_schema(combined, catalog.settings.max_columns)
        transforms: Any = dict(expressions)
    else:
        assert schema is not None
        _check_schema(pa.schema([*current.schema, *schema]), catalog.settings.max_columns)
        strict = [f.name for f in schema if not f.nullable]
        if strict:
            raise InvalidSchema(
                f"new column(s) {strict} are not nullable, but existing rows would hold null "
                "in them: declare the fields nullable, or give an SQL expression"
            )
        transforms = schema
    return _changed(catalog, name, "add_columns", lambda ds: ds.add_columns(transforms))


def alter_columns(
    catalog: TableCatalog,
    name: str,
    alterations: list[Alteration],
    metadata: MetadataUpdate | None = None,
    fingerprint: str = "",
) -> WriteResult:
    """Rename columns, change their nullability or type, as one change (then ``metadata``)."""
    current = _current(catalog, name, fingerprint)
    if not alterations:
        raise InvalidArgument("alter_columns needs at least one alteration")
    schema = current.schema
    paths = [a.path for a in alterations]
    _check_known(schema, paths)
    if len(set(paths)) != len(paths):
        raise InvalidArgument(f"a column is altered twice in {paths}: merge its alterations")
    renamed_away = {a.path for a in alterations if a.rename is not None and "." not in a.path}
    taken = set(schema.names) - renamed_away
    for alteration in alterations:
        if alteration.rename is None:
            continue
        if not alteration.rename or not alteration.rename.isprintable():
            raise InvalidSchema(f"invalid new name {alteration.rename!r} for {alteration.path!r}")
        if "." not in alteration.path:
            if alteration.rename in taken:
                raise InvalidSchema(
                    f"cannot rename {alteration.path!r} to {alteration.rename!r}: the table "
                    "has a column of that name"
                )
            taken.add(alteration.rename)
    lance_alterations: list[dict[str, Any]] = []
    for alteration in alterations:
        change: dict[str, Any] = {"path": alteration.path}
        if alteration.rename is not None:
            change["name"] = alteration.rename
        if alteration.nullable is not None:
            change["nullable"] = alteration.nullable
        if alteration.data_type is not None:
            change["data_type"] = alteration.data_type
        lance_alterations.append(change)
    return _changed_with_metadata(
        catalog, name, "alter_columns", lambda ds: ds.alter_columns(*lance_alterations), metadata
    )


def drop_columns(
    catalog: TableCatalog,
    name: str,
    columns: list[str],
    metadata: MetadataUpdate | None = None,
    fingerprint: str = "",
) -> WriteResult:
    """Remove columns (their data goes at the next compaction), then apply ``metadata``."""
    current = _current(catalog, name, fingerprint)
    if not columns:
        raise InvalidArgument("drop_columns needs at least one column")
    _check_known(current.schema, columns)
    if set(current.schema.names) <= set(columns):
        raise InvalidSchema(f"cannot drop every column of table {name!r}: drop the table instead")
    return _changed_with_metadata(
        catalog, name, "drop_columns", lambda ds: ds.drop_columns(list(columns)), metadata
    )


def table_statistics(dataset: lance.LanceDataset) -> TableStatistics:
    """LanceDB's ``stats()`` of ``dataset``, from its manifest: bytes of data files and indexes,
    and the physical rows of each fragment."""
    fragments = dataset.get_fragments()
    lengths = sorted(fragment.physical_rows for fragment in fragments)
    data_bytes = sum(
        data_file.file_size_bytes or 0
        for fragment in fragments
        for data_file in fragment.data_files()
    )
    described = dataset.describe_indices()
    index_bytes = sum(int(getattr(d, "total_size_bytes", 0) or 0) for d in described)
    count = len(lengths)
    summary = FragmentLengths()
    if count:
        # Percentiles by rank count * p, as LanceDB computes them.
        summary = FragmentLengths(
            min=lengths[0],
            max=lengths[-1],
            mean=int(np.sum(lengths)) // count,
            p25=lengths[count // 4],
            p50=lengths[count // 2],
            p75=lengths[count * 3 // 4],
            p99=lengths[count * 99 // 100],
        )
    return TableStatistics(
        total_bytes=data_bytes + index_bytes,
        num_rows=dataset.count_rows(),
        num_indices=len(described),
        num_fragments=count,
        num_small_fragments=sum(1 for rows in lengths if rows < SMALL_FRAGMENT_ROWS),
        lengths=summary,
    )


def stats(catalog: TableCatalog, name: str) -> TableStatistics:
    """:func:`table_statistics` of table ``name`` at its latest version."""
    return table_statistics(catalog.dataset(name))


def check_compaction_options(options: dict[str, Any]) -> dict[str, Any]:
    """Lance's compact_files options, refused when a count is 0 or the threshold is not a
    fraction (Lance would take them, and compact in some other way than asked)."""
    zero = sorted(k for k, v in options.items() if k != "materialize_deletions" and v == 0)
    if zero:
        raise InvalidArgument(f"compact_files option(s) {zero} must be positive, not 0")
    threshold = options.get("materialize_deletions_threshold")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise InvalidArgument(
            f"materialize_deletions_threshold is a fraction between 0 and 1, not {threshold}"
        )
    return options
