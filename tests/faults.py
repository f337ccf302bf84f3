"""What the fault tests share: services as processes that can be killed and restarted on the same
address, and Python interpreters that run a service on a full or read-only data root."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service_kit.launch import service_process


def serve(
    exits: ExitStack, module: str, *flags: str, port: int = 0, **options: Any
) -> tuple[str, subprocess.Popen[str]]:
    """``python -m <module>`` as a process until ``exits`` closes; on ``port`` when given, so
    that a restarted service comes back on the address its peers already dial."""
    return exits.enter_context(service_process(module, *flags, port=port or None, **options))


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status


SERVING = health_pb2.HealthCheckResponse.SERVING


def wrapped_python(directory: Path, name: str, script: str) -> str:
    """An executable to pass service_process as ``python``: a shell script in which ``"$@"`` is
    this interpreter followed by the service's arguments."""
    path = directory / name
    path.write_text(f'#!/bin/sh\nset -- {shlex.quote(sys.executable)} "$@"\n{script}\n')
    path.chmod(0o755)
    return str(path)


def file_size_limited(directory: Path, max_bytes: int) -> str:
    """Python under RLIMIT_FSIZE: a file written past ``max_bytes`` fails with EFBIG."""
    return wrapped_python(directory, "python-fsize", f'exec prlimit --fsize={max_bytes} -- "$@"')


def on_small_tmpfs(directory: Path, root: Path, size: str) -> str:
    """Python whose ``root`` is a tmpfs of ``size`` mounted in a mount namespace of its own:
    a real ENOSPC, seen by that process only, gone when it exits."""
    mount = 'mount -t tmpfs -o size="$1" tmpfs "$0" && shift && exec "$@"'
    script = f'exec unshare --mount -- sh -c {shlex.quote(mount)} {root} {size} "$@"'
    return wrapped_python(directory, "python-tmpfs", script)


def read_only(directory: Path, root: Path) -> str:
    """Python that sees ``root`` mounted read-only (a bind mount in its own mount namespace);
    root is no help: EROFS refuses it too."""
    mount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    script = f'exec unshare --mount -- sh -c {shlex.quote(mount)} {root} "$@"'
    return wrapped_python(directory, "python-ro", script)


def can_mount_privately() -> bool:
    """Whether this process may make a mount namespace and mount in it (root, or CAP_SYS_ADMIN)."""
    if not shutil.which("unshare"):
        return False
    with tempfile.TemporaryDirectory() as target:
        command = ["unshare", "--mount", "--", "mount", "-t", "tmpfs", "tmpfs", target]
        return subprocess.run(command, capture_output=True).returncode == 0


def rows_by_key(table: pa.Table, key: str, item: str) -> dict[int, list[int]]:
    """``item`` values grouped by ``key``, each group sorted."""
    grouped: dict[int, list[int]] = {}
    for row in table.select([key, item]).to_pylist():
        grouped.setdefault(row[key], []).append(row[item])
    return {k: sorted(v) for k, v in grouped.items()}
