"""In-process stacks for ``connect("./dir")``: the three services on private Unix sockets."""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import IO, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedsearch.errors import Unavailable

READY_TIMEOUT_S = 120.0
# The in-process services take no tokens, whatever the environment says (*_AUTH_TOKENS): they
# listen on Unix sockets in a directory only this user can enter.
OPEN = {"auth_tokens": "", "auth_tokens_file": ""}


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

    def stop_servers(self, servers: list[grpc.aio.Server]) -> None:
        """Stop ``servers``, then the loop itself, and wait for its thread to end.

        Leaving the loop running into interpreter exit lets gRPC's pollers race the runtime's
        teardown, which can abort the process after every test has passed.
        """

        async def stop_all() -> None:
            await asyncio.gather(*(s.stop(0) for s in servers))
            # Background work such as a warm-up still loading a model is cancelled, as
            # asyncio.run() would, rather than destroyed pending when the loop closes.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        try:
            self.run(stop_all())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            if not self.thread.is_alive():
                self.loop.close()


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
        common = {"metrics_port": -1, "grace_period_s": 0.0, **OPEN}
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
                    peer_token="",
                    peer_token_file="",
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
            settings = EmbedderSettings(
                socket=socket, metrics_port=-1, preload="", **OPEN, **_own_machine()
            )
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
        try:
            cls._loop.stop_servers(cls._servers)
        finally:
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


def wait_until_serving(
    target: str, timeout: float, credentials: grpc.ChannelCredentials | None = None
) -> None:
    """Block until the service at ``target`` reports SERVING, or raise Unavailable."""
    deadline = time.monotonic() + timeout
    channel = (
        grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    )
    with channel:
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def service_process(
    module: str,
    *flags: str,
    python: str = sys.executable,
    env: dict[str, str] | None = None,
    output: int | IO[str] | None = subprocess.DEVNULL,
    ready_timeout: float = READY_TIMEOUT_S,
    port: int | None = None,
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``python -m <module>`` on a loopback port (a free one unless ``port`` is given: a
    restart on the same address), metrics off, until it is SERVING.

    Yields its address and process; SIGTERM stops it on the way out. For tests, benchmarks and
    tools that need one real service process.
    """
    port = port or free_port()
    command = [python, "-m", module, "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        [*command, "--metrics-port", "-1", *flags],
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        text=True,
    )
    try:
        wait_until_serving(f"127.0.0.1:{port}", ready_timeout)
        yield f"127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _own_machine() -> dict[str, str]:
    """In process, every caller is this user: a model path of theirs anywhere may load, and
    their keys may go to any base_url, unless EMBEDDER_MODEL_ROOTS or
    EMBEDDER_ALLOWED_BASE_URLS narrow it (the settings object reads those itself)."""
    defaults = {"EMBEDDER_MODEL_ROOTS": ("model_roots", os.sep)}
    defaults["EMBEDDER_ALLOWED_BASE_URLS"] = ("allowed_base_urls", "*")
    return {field: value for env, (field, value) in defaults.items() if env not in os.environ}
