"""`embedsearch reembed` on Ray: a table re-embedded under another function holds the vectors
the gateway gives that function, is searched with it after one switching commit, and rolls
back to its old binding and vectors by restoring the version before."""

from __future__ import annotations

from pathlib import Path

import grpc
import lance
import numpy as np
import pyarrow as pa
import pytest
from conftest import QUIET
from helpers import create_text_table
from ray_cluster import local_ray

import embedsearch
from embedder_service.server import create_server as create_embedder
from embedder_service.settings import EmbedderSettings
from embedsearch.contract.channels import wait_until_serving
from embedsearch.contract.convert import spec_to_pb
from embedsearch.contract.errors import InvalidArgument
from embedsearch.contract.wire import schema_to_ipc
from embedsearch.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from gateway.mapping import bindings_from_schema
from gateway.server import create_server as create_gateway
from gateway.settings import GatewaySettings
from store_service.server import create_server as create_store
from store_service.settings import StoreSettings

pytestmark = pytest.mark.slow
TOY = {"name": "toy-hash", "model": {"dims": 16}}
TEXTS = [f"note {i} on {('rivers', 'orbits', 'bread')[i % 3]} and {i % 7} more" for i in range(90)]


@pytest.fixture(scope="module")
def ray_address() -> str:
    return local_ray()


@pytest.fixture(scope="module")
def toy_stack(servers, tmp_path_factory) -> tuple[str, Path]:
    """A gateway whose embedder also serves the test plugins' toy-hash; (address, data root)."""
    root = tmp_path_factory.mktemp("reembed")
    embedder = servers.start(
        create_embedder, EmbedderSettings(**{**QUIET, "preload": "", "plugins": "toy_plugin"})
    )
    store = servers.start(
        create_store, StoreSettings(data_root=str(root), maintenance_interval_s=0, **QUIET)
    )
    gateway = servers.start(
        create_gateway, GatewaySettings(embedder_addr=embedder, store_addr=store, **QUIET)
    )
    wait_until_serving(gateway, timeout=120)
    return gateway, root


def reembed(root: Path, table: str, function: dict, column: str = "", **job: object) -> object:
    from ray_jobs.cluster import Workers, connect
    from ray_jobs.progress import Reporting
    from ray_jobs.reembed import ReembedJob
    from ray_jobs.reembed import reembed as run
    from ray_jobs.tables import TableRef

    workers = connect("", Workers(1))
    table_ref = TableRef.from_env(str(root), table)
    return run(ReembedJob(table_ref, function, column, **job), workers, Reporting(every_s=1.0))  # type: ignore[arg-type]


def vectors(dataset: lance.LanceDataset, column: str) -> np.ndarray:
    return np.stack(dataset.to_table(columns=[column]).column(column).to_numpy(False))


def test_reembed_switches_the_binding_in_one_commit_and_rolls_back(
    ray_address, toy_stack, monkeypatch
):
    address, root = toy_stack
    stub = gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(address))
    db = embedsearch.connect(f"grpc://{address}")
    rows = pa.table({"id": pa.array(range(len(TEXTS)), pa.int64()), "text": TEXTS})
    create_text_table(stub, "docs")  # text -> vector by the bundled sentence-transformers
    db.open_table("docs").add(rows)
    # The reference: the same rows added through the gateway under toy-hash, into "toy".
    toy = common_pb2.EmbeddingBinding(
        function=spec_to_pb(TOY["name"], TOY["model"]), source_column="text", vector_column="toy"
    )
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("text", pa.string())])
    stub.CreateTable(
        gateway_pb2.CreateTableRequest(
            name="reference", arrow_schema=schema_to_ipc(schema), bindings=[toy]
        )
    )
    db.open_table("reference").add(rows)
    reference = lance.dataset(root / "reference.lance")
    before = lance.dataset(root / "docs.lance")
    st_hits = db.open_table("docs").search("orbits").limit(5).to_arrow()
    monkeypatch.setenv("EMBEDDER_PLUGINS", "toy_plugin")  # the job's embedder settings

    result = reembed(root, "docs", TOY, column="toy")

    after = lance.dataset(root / "docs.lance")
    assert result.version == after.version == before.version + 2  # backfill, then switch
    assert bindings_from_schema(after.schema) == bindings_from_schema(reference.schema)
    np.testing.assert_allclose(vectors(after, "toy"), vectors(reference, "toy"), atol=1e-6)
    np.testing.assert_array_equal(vectors(after, "vector"), vectors(before, "vector"))
    # The backfill alone left the binding as it was: the switch is the one commit after it.
    backfilled = lance.dataset(root / "docs.lance", version=after.version - 1)
    assert bindings_from_schema(backfilled.schema) == bindings_from_schema(before.schema)
    # The gateway searches with the new function at once (a stale descriptor is refreshed).
    found = db.open_table("docs").search("orbits").limit(5).to_arrow()
    expected = db.open_table("reference").search("orbits").limit(5).to_arrow()
    np.testing.assert_allclose(
        found.column("_distance").to_numpy(), expected.column("_distance").to_numpy(), atol=1e-6
    )

    db.open_table("docs").restore(before.version)

    restored = lance.dataset(root / "docs.lance")
    assert restored.schema.equals(before.schema, check_metadata=True)
    assert restored.to_table().equals(before.to_table())
    again = db.open_table("docs").search("orbits").limit(5).to_arrow()
    assert again.column("id").to_pylist() == st_hits.column("id").to_pylist()


def test_a_table_with_several_bindings_needs_the_source_named(ray_address, toy_stack):
    address, root = toy_stack
    stub = gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(address))
    schema = pa.schema([pa.field("title", pa.string()), pa.field("body", pa.string())])
    bindings = [
        common_pb2.EmbeddingBinding(
            function=spec_to_pb(TOY["name"], TOY["model"]), source_column=s, vector_column=f"{s}_v"
        )
        for s in ("title", "body")
    ]
    stub.CreateTable(
        gateway_pb2.CreateTableRequest(
            name="two_bindings", arrow_schema=schema_to_ipc(schema), bindings=bindings
        )
    )
    with pytest.raises(InvalidArgument, match="--source-column"):
        reembed(root, "two_bindings", TOY)
