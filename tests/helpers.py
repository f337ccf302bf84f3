"""Helpers shared by tests: building requests and asserting status codes and reasons."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest

from embedsearch.contract.convert import spec_to_pb
from embedsearch.contract.errors import ERROR_DOMAIN, ERRORS_BY_REASON, STATUS_CODES
from embedsearch.contract.status import details_of
from embedsearch.contract.wire import schema_to_ipc, table_to_ipc
from embedsearch.v1 import common_pb2, gateway_pb2


def st_binding(source: str = "text", vector: str = "vector") -> common_pb2.EmbeddingBinding:
    return common_pb2.EmbeddingBinding(
        function=spec_to_pb("sentence-transformers", {}), source_column=source, vector_column=vector
    )


def create_text_table(stub: Any, name: str) -> gateway_pb2.TableInfo:
    """A table with text -> vector through the bundled model, plus an id column."""
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("text", pa.string())])
    return stub.CreateTable(
        gateway_pb2.CreateTableRequest(
            name=name, arrow_schema=schema_to_ipc(schema), bindings=[st_binding()]
        )
    )


def arrow_rows(**columns: list) -> common_pb2.RowData:
    return common_pb2.RowData(arrow_ipc=table_to_ipc(pa.table(columns)))


def reason_of(err: grpc.RpcError) -> str:
    """The ErrorInfo reason of a failed call ("" when it carries none, as grpc's own errors)."""
    found = details_of(err)
    assert found.domain in ("", ERROR_DOMAIN), found
    return found.reason


def expect_code(
    code: grpc.StatusCode,
    call: Callable[[], Any],
    *fragments: str,
    reason: str | None = None,
    fields: Sequence[str] | None = None,
) -> str:
    """Run ``call``; assert it fails with ``code`` and, when given, the ErrorInfo ``reason``
    and the fields its BadRequest names, and that its message contains ``fragments`` (what
    it tells the user to fix)."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    found = reason_of(info.value)
    if reason is not None:
        assert found == reason, (found, info.value.details())
    if fields is not None:
        violations = details_of(info.value).field_violations
        assert [field for field, _ in violations] == list(fields), violations
    if found:  # a reason always belongs to the code it came with
        assert STATUS_CODES[ERRORS_BY_REASON[found]] == code.name, (found, code)
    details = info.value.details()
    for fragment in fragments:
        assert fragment in details, details
    return details


def tiny_bert(
    directory: Path, words: list[str], model_class: str = "BertModel", **sizes: Any
) -> str:
    """A BERT with random (seeded) weights and a word-level vocabulary (BERT's five special
    tokens, then ``words``), saved with its tokenizer to ``directory``; ``sizes`` override the
    BertConfig below (``model_class`` names the transformers class: BertModel, or
    BertForSequenceClassification for a cross-encoder)."""
    import torch
    import transformers

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    # vocab= (a dict), not vocab_file=: transformers 5 ignores the file, and every word would
    # be [UNK], leaving the tests blind to what the model is given.
    tokenizer = transformers.BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)})
    assert tokenizer(words[0]).input_ids == [2, 5, 3]
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 64,
        **sizes,
    }
    model = getattr(transformers, model_class)(
        transformers.BertConfig(vocab_size=len(vocab), **config)
    )
    model.save_pretrained(directory)
    return str(directory)


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    """Serves a directory's files over HTTP, logging nothing."""

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving_directory(directory: Path, handler: type[QuietFiles] = QuietFiles) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 for ``directory``'s files: its base URL."""

    def make(*args: Any) -> QuietFiles:
        return handler(*args, directory=str(directory))

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def refined_by_lance(dataset: Any, query: Any, k: int, setting: Any) -> Any:
    """Row ids of a query's k nearest under a calibration ``setting``, refined by Lance itself:
    a ``refined`` search for ``calibration.calibrate`` that the store did not write."""
    nearest = {"column": "vector", "q": query, "k": k, "nprobes": setting.nprobes}
    found = dataset.to_table(
        columns=["_distance"],
        with_row_id=True,
        nearest={**nearest, "refine_factor": setting.refine_factor},
    )
    return found.column("_rowid").to_numpy()
