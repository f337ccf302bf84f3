"""``embedsearch ingest``, ``embedsearch reembed`` and ``embedsearch index``: Ray jobs on the
store's data root. With --address they run on that Ray cluster (KubeRay's head, say); without,
on a Ray instance started on this machine."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any

from embedsearch.contract.errors import EmbedsearchError, InvalidArgument
from service_kit.cli import JOBS

BAD_VECTORS = ("error", "drop", "fill", "null")
# Index parameters given as flags of their own; the rest (tokenizer options) go in --params.
_INDEX_FLAGS = ("num_partitions", "num_sub_vectors", "num_bits", "m", "ef_construction")
_INDEX_FLAGS += ("max_iterations", "sample_rate", "metric", "replace")


def _common(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--data-root",
        default=env("STORE_DATA_ROOT", "./data"),
        help="the store's data root: a directory or s3://bucket/prefix (STORE_DATA_ROOT); "
        "object-store options come from AWS_* and STORE_STORAGE_OPTIONS, as for the store",
    )
    parser.add_argument(
        "--address",
        default=env("RAY_ADDRESS", ""),
        help="Ray cluster to run on: ray://head:10001, head:6379 or auto (RAY_ADDRESS); "
        "empty starts Ray on this machine",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="Ray workers (one actor and model each)"
    )
    parser.add_argument(
        "--cpus-per-worker",
        type=float,
        default=1.0,
        help="cores each worker holds where the cluster has no GPUs (on GPUs: one GPU each)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(env("EMBEDSEARCH_JOB_METRICS_PORT", "-1")),
        help="serve the job's progress as Prometheus /metrics on this port while it runs "
        "(EMBEDSEARCH_JOB_METRICS_PORT; -1: off)",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="interface of --metrics-port (loopback; 0.0.0.0 for Prometheus in another pod)",
    )
    parser.add_argument(
        "--pushgateway",
        default=env("EMBEDSEARCH_PUSHGATEWAY", ""),
        help="Prometheus Pushgateway URL that progress is pushed to (EMBEDSEARCH_PUSHGATEWAY)",
    )
    parser.add_argument(
        "--report-every", type=float, default=5.0, help="seconds between progress lines"
    )


def _bad_vectors(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--on-bad-vectors",
        choices=BAD_VECTORS,
        default=default,
        help=f"rows whose source is null or empty, as LanceDB's on_bad_vectors (default {default})",
    )
    parser.add_argument("--fill-value", type=float, default=0.0, help="with --on-bad-vectors fill")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="embedsearch", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    ingest = commands.add_parser("ingest", help=JOBS["ingest"])
    ingest.add_argument(
        "source",
        help="a file, directory or s3:// URI of Parquet, JSONL or "
        "CSV files, or a Lance dataset (a LanceDB table's .lance directory)",
    )
    ingest.add_argument("--table", required=True, help="the table to append to (it must exist)")
    ingest.add_argument(
        "--format",
        default="",
        help="parquet, jsonl, csv or lance (default: told by the source's suffix)",
    )
    ingest.add_argument("--batch-rows", type=int, default=1024, help="rows per embedding batch")
    ingest.add_argument(
        "--rows-per-fragment",
        type=int,
        default=128 * 1024,
        help="most rows per written Lance fragment",
    )
    _bad_vectors(ingest, "error")
    reembed = commands.add_parser("reembed", help=JOBS["reembed"])
    reembed.add_argument("table")
    reembed.add_argument(
        "--function",
        required=True,
        help='the new function, as LanceDB writes it: {"name": provider, "model": {arguments}}',
    )
    reembed.add_argument(
        "--column",
        default="",
        help="the new vector column (default: the old one's name with _v<version read>)",
    )
    reembed.add_argument(
        "--source-column",
        default="",
        help="the column to embed (default: the source of the table's only binding)",
    )
    reembed.add_argument("--batch-rows", type=int, default=1024, help="rows per batch")
    _bad_vectors(reembed, "null")
    index = commands.add_parser("index", help=JOBS["index"])
    index.add_argument("table")
    index.add_argument("--column", required=True)
    index.add_argument(
        "--type",
        dest="index_type",
        required=True,
        help="IVF_PQ, IVF_HNSW_SQ, IVF_FLAT, IVF_SQ, ...; BTREE, BITMAP, "
        "LABEL_LIST or INVERTED (full text)",
    )
    index.add_argument("--name", default="", help="default <column>_idx, as the store names it")
    for name in _INDEX_FLAGS:
        flag = "--" + name.replace("_", "-")
        if name == "replace":
            index.add_argument(flag, action="store_true", help="rebuild an index of that name")
        elif name == "metric":
            index.add_argument(flag, default="l2", choices=("l2", "cosine", "dot"))
        else:
            index.add_argument(flag, type=int, default=0, help="0: the store's default")
    index.add_argument(
        "--params",
        default="{}",
        help='other IndexParams as JSON, e.g. {"with_position": true, "language": "English"}',
    )
    for command in (ingest, reembed, index):
        _common(command)
    return root


def run(args: argparse.Namespace) -> str:
    """Run the job ``args`` describe; returns the line saying what it committed."""
    import json

    from gateway.values import BadVectors
    from ray_jobs.cluster import Workers, connect
    from ray_jobs.progress import Reporting
    from ray_jobs.tables import TableRef

    table = TableRef.from_env(args.data_root, args.table)
    workers = connect(args.address, Workers(args.workers, args.cpus_per_worker))
    reporting = Reporting(args.metrics_port, args.metrics_host, args.pushgateway, args.report_every)
    if args.command == "index":
        from embedsearch.contract.values import IndexParams
        from ray_jobs.index import IndexJob, build_index

        given = {name: getattr(args, name) for name in _INDEX_FLAGS}
        try:
            params = IndexParams(**{**given, **json.loads(args.params)})
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"--params: {exc}") from exc
        result = build_index(
            IndexJob(table, args.column, args.index_type, args.name, params), workers
        )
        return f"index {args.table}: built as version {result.version} in {result.seconds:.1f}s"
    bad = BadVectors(args.on_bad_vectors, args.fill_value)
    if args.command == "ingest":
        from ray_jobs.ingest import IngestJob, ingest

        job = IngestJob(
            args.source, table, args.format, bad, args.batch_rows, args.rows_per_fragment
        )
        result = ingest(job, workers, reporting)
    else:
        from ray_jobs.reembed import ReembedJob, parse_function, reembed

        function = parse_function(args.function)
        result = reembed(
            ReembedJob(table, function, args.column, args.source_column, bad, args.batch_rows),
            workers,
            reporting,
        )
    return (
        f"{args.command} {args.table}: committed {result.rows:,} rows as version "
        f"{result.version} (read version {result.read_version}) in {result.seconds:.1f}s"
    )


def job_error(exc: BaseException) -> BaseException:
    """The error a Ray task raised, out of the wrappers Ray and lance-ray put around it."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, EmbedsearchError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    return exc


def main(argv: list[str]) -> int:
    """Parse ``argv`` (the subcommand first) and run the job; 1 on a failed job, 2 on a
    missing extra."""
    missing = [m for m in ("ray", "lance_ray") if importlib.util.find_spec(m) is None]
    args = parser().parse_args(argv)
    if missing:
        need = f'embedsearch {args.command} runs on Ray: pip install "embedsearch[ray]"'
        print(f"embedsearch: {need} (missing {', '.join(missing)})", file=sys.stderr)
        return 2
    try:
        print(run(args), flush=True)
    except Exception as exc:  # a job's failure, told in one line
        cause: Any = job_error(exc)
        if not isinstance(cause, EmbedsearchError):
            raise
        print(f"embedsearch {args.command}: {cause}", file=sys.stderr)
        return 1
    return 0
