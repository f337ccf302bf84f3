"""Service processes for the launcher, tests and benchmarks: a free loopback port, and
``python -m <service>`` run until it reports SERVING."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from embedsearch.contract.channels import wait_until_serving
from embedsearch.contract.errors import FailedPrecondition

READY_TIMEOUT_S = 120.0
# Set by `embedsearch up` in its children: a service exits when the launcher that started it
# is gone (service_kit.server).
PARENT_PID_ENV = "EMBEDSEARCH_PARENT_PID"
# Modules the services need beyond the client install, with the package that brings each.
SERVER_MODULES = {
    "lance": "pylance",
    "torch": "torch",
    "sentence_transformers": "sentence-transformers",
    "prometheus_client": "prometheus-client",
    "pydantic_settings": "pydantic-settings",
    "grpc_reflection": "grpcio-reflection",
}


def require_server_extra(what: str) -> None:
    """Refuse clearly when this Python has the client install only: ``what`` runs the
    services, which the ``server`` extra brings."""
    missing = [pkg for mod, pkg in SERVER_MODULES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise FailedPrecondition(
            f"{what} runs the services in this Python, which lacks {', '.join(missing)}: "
            "pip install 'embedsearch[server]'"
        )


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
