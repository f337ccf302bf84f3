"""In-process stacks for ``connect("./dir")``: the three services on private Unix sockets."""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import tempfile
import threading
from collections.abc import Coroutine
from typing import Any

import grpc

from embedsearch.contract.channels import wait_until_serving

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
                    # The caller's own process: it reads any file and URL, as LanceDB does,
                    # unless GATEWAY_MEDIA_ROOTS / GATEWAY_MEDIA_HOSTS say otherwise.
                    media_roots=os.environ.get("GATEWAY_MEDIA_ROOTS", os.sep),
                    media_hosts=os.environ.get("GATEWAY_MEDIA_HOSTS", "*"),
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
    from service_kit.launch import require_server_extra

    require_server_extra(f"connect({data_dir!r})")
    key = os.path.abspath(data_dir)
    with _STACKS_LOCK:
        if key not in _STACKS:
            _STACKS[key] = LocalStack(key)
        return _STACKS[key]


def _own_machine() -> dict[str, str]:
    """In process, every caller is this user: a model path of theirs anywhere may load, and
    their keys may go to any base_url, unless EMBEDDER_MODEL_ROOTS or
    EMBEDDER_ALLOWED_BASE_URLS narrow it (the settings object reads those itself)."""
    defaults = {"EMBEDDER_MODEL_ROOTS": ("model_roots", os.sep)}
    defaults["EMBEDDER_ALLOWED_BASE_URLS"] = ("allowed_base_urls", "*")
    return {field: value for env, (field, value) in defaults.items() if env not in os.environ}
