"""Where an ingest reads its rows: Parquet, JSON lines, CSV, or a Lance (or LanceDB) table, from
a local path or an s3:// URI, as a Ray dataset."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import ray.data

from embedsearch.contract.errors import InvalidArgument
from embedsearch.contract.schema import is_list_type

FORMATS = ("parquet", "jsonl", "csv", "lance")
_SUFFIXES = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".lance": "lance",
}


def source_format(source: str, given: str = "") -> str:
    """The format named, or told by the source's suffix (a LanceDB table is a ``.lance``
    directory under its database)."""
    if given:
        if given not in FORMATS:
            raise InvalidArgument(f"unknown format {given!r}; use one of {list(FORMATS)}")
        return given
    path = source.rstrip("/").lower()
    for suffix, name in _SUFFIXES.items():
        if path.endswith(suffix):
            return name
    raise InvalidArgument(
        f"cannot tell the format of {source!r} from its name; pass --format ({', '.join(FORMATS)})"
    )


# pyarrow's S3FileSystem arguments, by the Lance store options that hold them.
_S3_ARGUMENTS = {
    "access_key": "aws_access_key_id",
    "secret_key": "aws_secret_access_key",
    "session_token": "aws_session_token",
    "region": "aws_region",
}


def filesystem(source: str, storage_options: dict[str, str]) -> pafs.FileSystem | None:
    """For an s3:// source, the S3 filesystem the store's options describe (endpoint, keys,
    region); None for a local path (Ray picks)."""
    if not source.startswith("s3://"):
        return None
    arguments = {k: storage_options[o] for k, o in _S3_ARGUMENTS.items() if o in storage_options}
    endpoint = storage_options.get("aws_endpoint", "")
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        arguments.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    return pafs.S3FileSystem(**arguments)


def read_source(
    source: str, fmt: str, schema: pa.Schema, storage_options: dict[str, str]
) -> ray.data.Dataset:
    """The source's rows. CSV columns the table knows are read as the table types them (a
    CSV cell has no type of its own); other formats keep theirs, and the rows are cast to
    the table's schema as the gateway would cast them."""
    import lance_ray

    if fmt == "lance":
        return lance_ray.read_lance(source, storage_options=storage_options or None)
    fs = filesystem(source, storage_options)
    extra: dict[str, Any] = {"filesystem": fs} if fs is not None else {}
    if fmt == "parquet":
        return ray.data.read_parquet(source, **extra)
    if fmt == "jsonl":
        return ray.data.read_json(source, lines=True, **extra)
    scalar = {f.name: f.type for f in schema if not is_list_type(f.type)}
    convert = pacsv.ConvertOptions(column_types=scalar, strings_can_be_null=True)
    return ray.data.read_csv(source, convert_options=convert, **extra)
