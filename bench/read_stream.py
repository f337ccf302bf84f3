"""Reading a whole table too large to hold: ``table.to_batches()`` over gRPC vs Lance's own scan.

A table of about BENCH_READ_GB (default 2) GB of rows (an id, a 200-character text and a
384-dimension float32 vector: about 1.5 KB a row on disk) is written with
``lance.write_dataset`` into the data root of a running stack (``embedsearch up``). A fresh
client process then reads every row with the SDK over gRPC
(``connect("grpc://…").open_table(t).to_batches()``), counting rows and dropping each batch;
the baseline is a fresh process reading the same dataset with
``lance.dataset(path).to_batches()``. Measures: the client process's peak RSS (the goal is
under 300 MB however large the table) and rows per second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

BENCH = "read_stream"
GIGABYTES = float(os.environ.get("BENCH_READ_GB", "2"))
DIMS = 384
BATCH_ROWS = 20_000
# Bytes a row takes on disk: the vector and the id (Lance compresses the repeated text away).
ROW_BYTES = DIMS * 4 + 8
TABLE = "big"

# Each reader runs in a process of its own, so that its peak RSS is its own.
READERS = {
    "ours": """
import sys, time, embedsearch
table = embedsearch.connect(sys.argv[1]).open_table(sys.argv[2])
start, rows = time.perf_counter(), 0
for batch in table.to_batches():
    rows += batch.num_rows
""",
    "lance": """
import sys, time, lance
dataset = lance.dataset(sys.argv[1] + "/" + sys.argv[2] + ".lance")
start, rows = time.perf_counter(), 0
for batch in dataset.to_batches():
    rows += batch.num_rows
""",
}
# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec from the parent.
REPORT = """
import json, re
seconds = time.perf_counter() - start
status = open("/proc/self/status").read()
peak_kb = int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1))
print(json.dumps({"rows": rows, "seconds": seconds, "peak_rss_mb": peak_kb / 1024}))
"""


def batches(total_rows: int) -> Iterator[pa.RecordBatch]:
    rng = np.random.default_rng(0)
    text = "x" * 200
    for start in range(0, total_rows, BATCH_ROWS):
        count = min(BATCH_ROWS, total_rows - start)
        vectors = rng.standard_normal((count, DIMS), dtype=np.float32)
        yield pa.RecordBatch.from_pydict(
            {
                "id": pa.array(np.arange(start, start + count), pa.int64()),
                "text": pa.array([text] * count),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIMS),
            }
        )


def read(kind: str, target: str) -> dict[str, float]:
    script = READERS[kind] + REPORT
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, target, TABLE],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def run() -> None:
    import lance

    from bench.common import emit, running_stack

    total_rows = int(GIGABYTES * 1e9 / ROW_BYTES)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        first = next(batches(1))
        reader = pa.RecordBatchReader.from_batches(first.schema, batches(total_rows))
        lance.write_dataset(reader, root / f"{TABLE}.lance", max_rows_per_file=200_000)
        size_gb = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 1e9
        baseline = read("lance", str(root))
        with running_stack(root) as uri:
            ours = read("ours", uri)
    assert ours["rows"] == baseline["rows"] == total_rows, (ours, baseline, total_rows)
    what = f"{total_rows} rows, {size_gb:.2f} GB on disk"
    emit(
        BENCH,
        f"client peak RSS reading every row ({what})",
        ours["peak_rss_mb"],
        "MB",
        "lance.dataset().to_batches() in its own process",
        baseline["peak_rss_mb"],
        lower_is_better=True,
    )
    emit(
        BENCH,
        f"rows per second reading every row ({what})",
        ours["rows"] / ours["seconds"],
        "rows/s",
        "lance.dataset().to_batches() in its own process",
        baseline["rows"] / baseline["seconds"],
        lower_is_better=False,
    )
