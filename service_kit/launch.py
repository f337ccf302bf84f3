"""Service processes for the launcher, tests and benchmarks: a free loopback port, and
``python -m <service>`` run until it reports SERVING."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from embedsearch.contract.channels import wait_until_serving

READY_TIMEOUT_S = 120.0


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
