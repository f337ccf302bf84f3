"""The ONNX Runtime backend: same vectors as torch, same table metadata, LanceDB still reads it."""

from __future__ import annotations

import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import lancedb
import numpy as np
import pytest
from conftest import QUIET

import embedsearch
from embedder_service.backends import BackendSettings, gpu_visible
from embedder_service.backends.onnx_runtime import OnnxPipeline, Target, intra_op_threads
from embedder_service.backends.onnx_runtime import main as onnx_runtime_main
from embedder_service.providers.huggingface import HuggingFaceEmbeddings
from embedder_service.providers.local import TokenPipeline
from embedder_service.providers.sentence_transformers import SentenceTransformerEmbeddings
from embedder_service.server import create_server as create_embedder
from embedder_service.settings import EmbedderSettings
from embedsearch.contract.channels import wait_until_serving
from embedsearch.contract.convert import spec_to_pb
from embedsearch.contract.errors import FailedPrecondition
from embedsearch.contract.wire import unpack_vectors
from embedsearch.embeddings import get_registry
from embedsearch.pydantic import LanceModel, Vector
from embedsearch.v1 import embedder_pb2, embedder_pb2_grpc
from gateway.server import create_server as create_gateway
from gateway.settings import GatewaySettings
from store_service.server import create_server as create_store
from store_service.settings import StoreSettings

pytestmark = pytest.mark.slow

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France.",
    "gRPC uses HTTP/2 and protocol buffers.",
    "Ünïcödé, emoji 🙂, numbers 3.14159 — and punctuation!",
    "Lance is a columnar format for machine learning data. " * 40,  # past 256 tokens
    "x",
]
QUERY = "where is the Eiffel tower"


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache with the bundled model exported (fp32 and int8), by the embedder's exporter."""
    root = tmp_path_factory.mktemp("onnx-cache")
    func = SentenceTransformerEmbeddings()
    func.use_backend(BackendSettings(backend="onnx-int8", onnx_cache_dir=str(root)))
    func.pipeline()  # exports fp32 (checked against torch), then int8
    return root


def st_function(cache: Path, backend: str = "onnx", **args) -> SentenceTransformerEmbeddings:
    func = SentenceTransformerEmbeddings(**args)
    func.use_backend(BackendSettings(backend=backend, onnx_cache_dir=str(cache)))
    return func


def test_settings_take_the_backend_from_flags_and_environment(monkeypatch):
    assert EmbedderSettings.from_cli([]).inference_backend.backend == "auto"
    flagged = EmbedderSettings.from_cli(["--backend", "onnx", "--onnx-cache-dir", "/x"])
    assert flagged.inference_backend == BackendSettings(backend="onnx", onnx_cache_dir="/x")
    monkeypatch.setenv("EMBEDDER_BACKEND", "onnx-int8")
    assert EmbedderSettings.from_cli([]).inference_backend.backend == "onnx-int8"
    monkeypatch.setenv("EMBEDDER_BACKEND", "tensorrt")
    with pytest.raises(ValueError, match="backend"):
        EmbedderSettings.from_cli([])


def test_onnx_tokenizes_as_the_torch_pipeline_does(onnx_cache):
    func = st_function(onnx_cache)
    onnx = func.pipeline()
    torch_pipeline = func.torch_pipeline()
    for mode in ("source", "query"):
        ours = [payload[0] for payload, _ in onnx.prepare(mode, TEXTS)]
        theirs = [payload["input_ids"] for payload, _ in torch_pipeline.prepare(mode, TEXTS)]
        assert [list(ids) for ids in ours] == [list(ids) for ids in theirs]
    assert max(len(ids) for ids in ours) == onnx.max_length == 256


def test_onnx_vectors_match_torch_and_int8_stays_close(onnx_cache):
    torch_vectors = st_function(onnx_cache, "torch", device="cpu").generate_embeddings(TEXTS)
    onnx = st_function(onnx_cache).generate_embeddings(TEXTS)
    assert cosines(onnx, torch_vectors).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(onnx, axis=1), 1.0, atol=1e-5)
    int8 = st_function(onnx_cache, "onnx-int8").generate_embeddings(TEXTS)
    assert cosines(int8, torch_vectors).mean() >= 0.99
    assert not np.allclose(int8, onnx, atol=1e-4)  # it is the quantized graph that ran


def test_huggingface_provider_runs_on_onnx(tmp_path, model_path):
    """Mean-pooled hidden states of a transformers model, not a sentence-transformers one."""
    torch_func = HuggingFaceEmbeddings(name=model_path, device="cpu", max_length=64)
    torch_func.use_backend(BackendSettings(backend="torch"))
    onnx_func = HuggingFaceEmbeddings(name=model_path, device="cpu", max_length=64)
    onnx_func.use_backend(BackendSettings(backend="onnx", onnx_cache_dir=str(tmp_path)))
    assert onnx_func.ndims() == torch_func.ndims() == 384
    got = onnx_func.generate_embeddings(TEXTS)
    assert cosines(got, torch_func.generate_embeddings(TEXTS)).min() >= 0.9999
    assert onnx_func.pipeline().max_length == 64


def test_auto_is_onnx_on_a_cpu_and_torch_on_a_gpu(monkeypatch):
    auto = BackendSettings()
    assert auto.backend == "auto"
    assert auto.auto_onnx("cpu")
    assert not any(auto.auto_onnx(device) for device in ("cuda", "cuda:1", "mps"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU visible: 'auto' is the CPU
    assert auto.auto_onnx("auto")
    # Named backends are not auto's to choose.
    assert not BackendSettings(backend="torch").auto_onnx("cpu")
    assert not BackendSettings(backend="onnx").auto_onnx("cpu")


def test_auto_runs_a_cpu_model_on_its_export(onnx_cache):
    func = st_function(onnx_cache, "auto", device="cpu")
    assert func.on_onnx()
    assert isinstance(func.pipeline(), OnnxPipeline)
    torch_vectors = st_function(onnx_cache, "torch", device="cpu").generate_embeddings(TEXTS)
    assert cosines(func.generate_embeddings(TEXTS), torch_vectors).min() >= 0.9999


def test_auto_serves_on_torch_where_no_export_can_be_made(tmp_path, caplog):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("the cache cannot be made under a file")
    func = st_function(not_a_dir / "cache", "auto", device="cpu")
    with caplog.at_level(logging.WARNING, logger="embedder_service"):
        assert not func.on_onnx()
    assert "served by torch" in caplog.text and "--onnx-cache-dir" in caplog.text
    assert isinstance(func.pipeline(), TokenPipeline)
    assert func.generate_embeddings(["hello"]).shape == (1, 384)
    # Named, the backend is a promise: its failure is the caller's to see.
    with pytest.raises(FailedPrecondition, match="--onnx-cache-dir"):
        st_function(not_a_dir / "cache", "onnx", device="cpu").pipeline()


def test_embedders_sharing_a_cache_export_a_model_once(tmp_path, caplog):
    functions = [st_function(tmp_path, "auto", device="cpu") for _ in range(3)]
    with (
        caplog.at_level(logging.INFO, logger="embedder_service"),
        ThreadPoolExecutor(len(functions)) as pool,
    ):
        assert all(pool.map(lambda func: func.on_onnx(), functions))
    exports = [r for r in caplog.records if r.getMessage().startswith("exporting")]
    assert len(exports) == 1


def test_the_image_build_step_fills_the_cache_the_default_embedder_reads(onnx_cache, caplog):
    """deploy/Dockerfile runs ``python -m embedder_service.backends.onnx_runtime DIR``: what it
    leaves in DIR is what an embedder with the default function and backend loads, unexported."""
    assert onnx_runtime_main([str(onnx_cache)]) == 0
    func = SentenceTransformerEmbeddings()  # device 'auto', as the embedder's default function
    func.use_backend(BackendSettings(onnx_cache_dir=str(onnx_cache)))
    with caplog.at_level(logging.INFO, logger="embedder_service"):
        assert func.on_onnx() or gpu_visible()
    assert not [r for r in caplog.records if r.getMessage().startswith("exporting")]


def test_the_session_threads_follow_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert intra_op_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert intra_op_threads() == len(os.sched_getaffinity(0))


def test_a_broken_export_is_refused_with_the_fix(onnx_cache, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(onnx_cache, broken)
    for model in broken.glob("*/model-fp32.onnx"):
        model.write_bytes(b"not an onnx graph")
    with pytest.raises(FailedPrecondition, match="--onnx-cache-dir"):
        st_function(broken).pipeline()


def test_the_target_follows_device_and_backend():
    import onnxruntime

    onnx, int8 = BackendSettings(backend="onnx"), BackendSettings(backend="onnx-int8")
    assert Target.choose(onnx, "cpu") == Target("fp32", ["CPUExecutionProvider"])
    assert Target.choose(int8, "cpu").variant == "int8"
    with pytest.raises(FailedPrecondition, match="mps"):
        Target.choose(onnx, "mps")
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():  # a GPU machine
        assert Target.choose(onnx, "auto").variant == "fp16"
        assert Target.choose(onnx, "cuda:1").providers[0] == (
            "CUDAExecutionProvider",
            {"device_id": 1},
        )
        with pytest.raises(FailedPrecondition, match="CPU only"):
            Target.choose(int8, "cuda")
    else:
        assert Target.choose(onnx, "auto").variant == "fp32"
        with pytest.raises(FailedPrecondition, match="onnxruntime-gpu"):
            Target.choose(onnx, "cuda")


def test_colbert_stays_on_torch_whatever_the_backend(tmp_path):
    from embedder_service.providers.colbert import ColbertEmbeddings

    func = ColbertEmbeddings(name="/nonexistent")
    func.use_backend(BackendSettings(backend="onnx", onnx_cache_dir=str(tmp_path)))
    assert not func.on_onnx()


def test_stack_on_onnx_writes_what_lancedb_reads_with_torch(
    servers, onnx_cache, tmp_path, model_path, table_name
):
    """An embedder on the onnx backend serves a gateway and store over gRPC; the table it fills
    says what a torch embedder's says, and LanceDB's own torch function agrees with its vectors."""

    def start(backend: str, data: str) -> tuple[str, str]:
        settings = {**QUIET, "backend": backend, "onnx_cache_dir": str(onnx_cache)}
        embedder = servers.start(create_embedder, EmbedderSettings(**settings))
        store = servers.start(
            create_store,
            StoreSettings(data_root=str(tmp_path / data), maintenance_interval_s=0, **QUIET),
        )
        gateway = servers.start(
            create_gateway, GatewaySettings(embedder_addr=embedder, store_addr=store, **QUIET)
        )
        wait_until_serving(gateway, timeout=120)
        return gateway, embedder

    (gateway, embedder), (torch_gateway, _) = start("onnx", "data"), start("torch", "torch-data")

    def fill(address: str) -> tuple[object, object]:
        func = get_registry().get("sentence-transformers").create()

        class Doc(LanceModel):
            text: str = func.SourceField()
            vector: Vector(func.ndims()) = func.VectorField()

        table = embedsearch.connect(f"grpc://{address}").create_table(table_name, schema=Doc)
        table.add([{"text": t} for t in TEXTS])
        return table, func

    ours, func = fill(gateway)
    on_torch, _ = fill(torch_gateway)
    metadata = ours.schema.metadata[b"embedding_functions"]
    assert metadata == on_torch.schema.metadata[b"embedding_functions"]
    assert b"onnx" not in metadata and b"backend" not in metadata

    table = lancedb.connect(tmp_path / "data").open_table(table_name)
    config = table.embedding_functions["vector"]
    assert config.function.name == model_path  # the bundled weights, loaded offline
    rows = table.to_arrow().to_pydict()
    stored = np.asarray(rows["vector"], dtype=np.float32)
    theirs = np.asarray(config.function.compute_source_embeddings(rows["text"]))
    assert cosines(stored, theirs).min() >= 0.9999
    query_theirs = np.asarray(config.function.compute_query_embeddings(QUERY))
    query_ours = np.asarray(func.compute_query_embeddings([QUERY]))  # through our gateway
    assert cosines(query_ours, query_theirs).min() >= 0.9999
    assert [r["text"] for r in table.search(QUERY).limit(3).to_list()] == [
        r["text"] for r in ours.search(QUERY).limit(3).to_list()
    ]

    # And the embedder answers Embed itself from the ONNX graph (the same vectors again).
    with grpc.insecure_channel(embedder) as channel:
        reply = embedder_pb2_grpc.EmbedderStub(channel).Embed(
            embedder_pb2.EmbedRequest(
                function=spec_to_pb("sentence-transformers", {}), texts=rows["text"]
            )
        )
    assert cosines(unpack_vectors(reply.vectors, reply.ndims), theirs).min() >= 0.9999
    assert json.loads(metadata)[0]["model"]["name"] == model_path
