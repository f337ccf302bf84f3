"""In-process stacks for ``connect("./dir")``: the three services on private Unix sockets."""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Coroutine
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedsearch.errors import Unavailable

READY_TIMEOUT_S = 120.0


class _Loop:
    """An event loop on a daemon thread, hosting the in-process servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="embedsearch-local", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


class LocalStack:
    """Embedder, store and gateway in this process, talking gRPC over Unix sockets: no ports.

    The embedder is shared by every stack in the process, so a model loads once however many
    directories are opened. Use :func:`local_stack` rather than this class.
    """

    _loop: _Loop | None = None
    _embedder_socket: str = ""
    _servers: list[grpc.aio.Server] = []  # noqa: RUF012 - process-wide by design
    _sockets_dir: str = ""

    def __init__(self, data_dir: str) -> None:
        from gateway.server import create_server as create_gateway
        from gateway.settings import GatewaySettings
        from store_service.server import create_server as create_store
        from store_service.settings import StoreSettings

        loop = self._start_embedder()
        tag = f"{len(LocalStack._servers)}"
        store_socket = os.path.join(LocalStack._sockets_dir, f"store-{tag}.sock")
        self.gateway_target = f"unix:{os.path.join(LocalStack._sockets_dir, f'gateway-{tag}.sock')}"
        common = {"metrics_port": -1, "grace_period_s": 0.0}
        loop.run(
            self._start(
                create_store, StoreSettings(socket=store_socket, data_root=data_dir, **common)
            )
        )
        loop.run(
            self._start(
                create_gateway,
                GatewaySettings(
                    socket=self.gateway_target.removeprefix("unix:"),
                    embedder_addr=LocalStack._embedder_socket,
                    store_addr=f"unix:{store_socket}",
                    **common,
                ),
            )
        )
        wait_until_serving(self.gateway_target, READY_TIMEOUT_S)

    @classmethod
    def _start_embedder(cls) -> _Loop:
        if cls._loop is None:
            from embedder_service.server import create_server as create_embedder
            from embedder_service.settings import EmbedderSettings

            cls._loop = _Loop()
            cls._sockets_dir = tempfile.mkdtemp(prefix="embedsearch-")
            socket = os.path.join(cls._sockets_dir, "embedder.sock")
            # Nothing preloaded: connect() returns at once, and the first embed loads the model.
            settings = EmbedderSettings(socket=socket, metrics_port=-1, preload="")
            cls._loop.run(cls._start(create_embedder, settings))
            cls._embedder_socket = f"unix:{socket}"
            atexit.register(cls._shutdown)
        return cls._loop

    @staticmethod
    async def _start(create: Any, settings: Any) -> None:
        server, _ = await create(settings)
        await server.start()
        LocalStack._servers.append(server)

    @classmethod
    def _shutdown(cls) -> None:
        if cls._loop is None:
            return

        async def stop_all() -> None:
            await asyncio.gather(*(s.stop(0) for s in cls._servers))

        try:
            cls._loop.run(stop_all())
        finally:
            cls._loop.loop.call_soon_threadsafe(cls._loop.loop.stop)
            shutil.rmtree(cls._sockets_dir, ignore_errors=True)


_STACKS: dict[str, LocalStack] = {}
_STACKS_LOCK = threading.Lock()


def local_stack(data_dir: str) -> LocalStack:
    """The in-process stack serving ``data_dir``, started on first use."""
    key = os.path.abspath(data_dir)
    with _STACKS_LOCK:
        if key not in _STACKS:
            _STACKS[key] = LocalStack(key)
        return _STACKS[key]


def wait_until_serving(target: str, timeout: float) -> None:
    """Block until the service at ``target`` reports SERVING, or raise Unavailable."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(
                    health_pb2.HealthCheckRequest(), timeout=min(2.0, max(timeout, 0.1))
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise Unavailable(f"{target} did not report SERVING within {timeout:.0f}s")
            time.sleep(0.1)
