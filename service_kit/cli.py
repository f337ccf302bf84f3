"""The ``embedsearch`` command: ``embedsearch up`` runs the whole stack as three processes."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from embedsearch.contract.channels import wait_until_serving
from embedsearch.contract.errors import FailedPrecondition, Unavailable
from service_kit.launch import PARENT_PID_ENV, free_port, require_server_extra

READY_TIMEOUT_S = 180.0
# The Ray jobs' subcommands (ray_jobs/cli.py).
JOBS = {
    "ingest": "embed a corpus (Parquet, JSONL, CSV, Lance) into a table with Ray",
    "reembed": "backfill a vector column under a new function with Ray, then bind it",
    "index": "build a vector, scalar or full-text index with Ray workers",
}
# After its grace period (10 s by default) a stopping service cancels what is left; past this,
# the launcher kills it.
STOP_TIMEOUT_S = 15.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedsearch", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start gateway, embedder and store; stop them on Ctrl-C")
    up.add_argument("--data-dir", default="./data", help="where the store keeps tables")
    up.add_argument("--host", default="0.0.0.0", help="interface the gateway listens on")
    up.add_argument(
        "--internal-host",
        default="127.0.0.1",
        help="interface embedder and store listen on (loopback: only the gateway reaches them)",
    )
    up.add_argument(
        "--embedder-python",
        default=os.environ.get("EMBEDSEARCH_EMBEDDER_PYTHON", sys.executable),
        help="the Python that runs the embedder (EMBEDSEARCH_EMBEDDER_PYTHON): a multimodal "
        "environment's for the image, audio and video providers (make install-multimodal)",
    )
    up.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="interface the three /metrics endpoints listen on (loopback: this machine only)",
    )
    up.add_argument(
        "--embedder-http-port",
        type=int,
        default=8051,
        help="port of the embedder's OpenAI-compatible HTTP API on --internal-host (-1: off); "
        "its api_key is EMBEDSEARCH_API_KEY, or one made up and printed at start",
    )
    for name, grpc_port, metrics_port in (
        ("gateway", 50050, 9450),
        ("embedder", 50051, 9451),
        ("store", 50052, 9452),
    ):
        up.add_argument(f"--{name}-port", type=int, default=grpc_port)
        up.add_argument(f"--{name}-metrics-port", type=int, default=metrics_port)
    # The Ray jobs (ray_jobs/, the `ray` extra) parse their own arguments: only named here.
    for name, summary in JOBS.items():
        commands.add_parser(name, help=summary, add_help=False)
    return parser


def up(args: argparse.Namespace) -> int:
    """Start the three services, wait for SERVING, print the endpoints, stop all on a signal."""
    python = sys.executable
    internal = args.internal_host
    embedder_addr = f"{internal}:{args.embedder_port}"
    store_addr = f"{internal}:{args.store_port}"
    specs = [
        (
            "embedder",
            embedder_addr,
            [
                args.embedder_python,
                "-m",
                "embedder_service",
                "--host",
                internal,
                "--port",
                str(args.embedder_port),
                "--metrics-port",
                str(args.embedder_metrics_port),
                "--metrics-host",
                args.metrics_host,
                "--http-port",
                str(args.embedder_http_port),
            ],
        ),
        (
            "store",
            store_addr,
            [
                python,
                "-m",
                "store_service",
                "--host",
                internal,
                "--port",
                str(args.store_port),
                "--metrics-port",
                str(args.store_metrics_port),
                "--metrics-host",
                args.metrics_host,
                "--data-root",
                args.data_dir,
            ],
        ),
        (
            "gateway",
            f"127.0.0.1:{args.gateway_port}"
            if args.host in ("0.0.0.0", "::")
            else f"{args.host}:{args.gateway_port}",
            [
                python,
                "-m",
                "gateway",
                "--host",
                args.host,
                "--port",
                str(args.gateway_port),
                "--metrics-port",
                str(args.gateway_metrics_port),
                "--metrics-host",
                args.metrics_host,
                "--embedder-addr",
                embedder_addr,
                "--store-addr",
                store_addr,
            ],
        ),
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        PARENT_PID_ENV: str(os.getpid()),
    }
    # Embedder and store take calls only with a token, made up now and handed over in the
    # environment (argv shows in ps), besides any the environment gives them already; the
    # gateway presents it. Clients never see it.
    # The embedder's HTTP API takes a read-only token of its own: EMBEDSEARCH_API_KEY, or one
    # made up now and printed below (it embeds and reranks; it reaches no table).
    token = secrets.token_urlsafe(32)
    api_key = os.environ.get("EMBEDSEARCH_API_KEY") or f"es-{secrets.token_urlsafe(24)}"
    extra = {"EMBEDDER": f"{api_key}:ro" if args.embedder_http_port >= 0 else None, "STORE": None}
    envs = {
        name: {
            **env,
            f"{prefix}_AUTH_TOKENS": _joined(
                token, extra[prefix], env.get(f"{prefix}_AUTH_TOKENS")
            ),
        }
        for name, prefix in (("embedder", "EMBEDDER"), ("store", "STORE"))
    }
    envs["gateway"] = {**env, "GATEWAY_PEER_TOKEN": token, "GATEWAY_PEER_TOKEN_FILE": ""}
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for name, address, command in specs:
            # A session of its own: Ctrl-C in the terminal reaches the launcher only, which
            # stops the services in order (the gateway drains first).
            procs.append(subprocess.Popen(command, env=envs[name], start_new_session=True))
            try:
                _wait(address, procs[-1], lambda: stopping)
            except Unavailable as exc:
                print(f"embedsearch: {name} did not start: {exc}", file=sys.stderr)
                return 1
            if stopping:
                return 0
        host = args.metrics_host
        metrics = {
            name: f"http://{host}:{getattr(args, f'{name}_metrics_port')}/metrics"
            for name in ("gateway", "embedder", "store")
        }
        print(
            f"embedsearch is up\n"
            f"  gateway   grpc://{specs[2][1]}  (metrics {metrics['gateway']})\n"
            f"  embedder  {embedder_addr}  (metrics {metrics['embedder']})\n"
            + (
                f"  embeddings http://{internal}:{args.embedder_http_port}/v1  "
                f"(OpenAI-compatible; api_key {api_key})\n"
                if args.embedder_http_port >= 0
                else ""
            )
            + f"  store     {store_addr}  (metrics {metrics['store']})\n"
            f"  data      {os.path.abspath(args.data_dir)}\n"
            "Ctrl-C stops all three.",
            flush=True,
        )
        while not stopping:
            for proc in procs:
                if proc.poll() is not None:
                    print(
                        f"embedsearch: {proc.args[2]} exited with {proc.returncode}",
                        file=sys.stderr,
                    )
                    return 1
            time.sleep(0.2)
        return 0
    finally:
        stop_in_order(procs)


def stop_in_order(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop the gateway (started last) first, and let it drain: calls in flight finish
    against an embedder and a store that still serve. Then stop those two."""
    gateway, peers = procs[2:], procs[:2]
    for group in (gateway, peers):
        for proc in group:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in group:
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _joined(*tokens: str | None) -> str:
    return ",".join(t for t in tokens if t)


def _wait(address: str, proc: subprocess.Popen[bytes], stopping: object) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and not stopping():  # type: ignore[operator]
        if proc.poll() is not None:
            raise Unavailable(f"it exited with code {proc.returncode}")
        try:
            wait_until_serving(address, timeout=1.0)
            return
        except Unavailable:
            continue
    if not stopping():  # type: ignore[operator]
        raise Unavailable(f"{address} was not SERVING after {READY_TIMEOUT_S:.0f}s")


def up_command(
    data_dir: str,
    host: str,
    ports: dict[str, int],
    metrics_ports: dict[str, int],
    embedder_python: str = sys.executable,
    http_port: int = -1,
) -> list[str]:
    """The argv of ``embedsearch up`` on the given ports (keys: gateway, embedder, store), the
    embedder's HTTP API on ``http_port`` (-1: off)."""
    command = [
        sys.executable,
        "-m",
        "service_kit.cli",
        "up",
        "--data-dir",
        data_dir,
        "--host",
        host,
        "--embedder-python",
        embedder_python,
        "--embedder-http-port",
        str(http_port),
    ]
    for name, port in ports.items():
        command += [f"--{name}-port", str(port), f"--{name}-metrics-port", str(metrics_ports[name])]
    return command


@contextmanager
def running(
    data_dir: str,
    embedder_python: str = sys.executable,
    env: dict[str, str] | None = None,
    http_port: int = -1,
) -> Iterator[str]:
    """``embedsearch up`` in a subprocess, on free loopback ports, as a deployment runs it
    (for tests and benchmarks): yields the gateway's address once every service is SERVING,
    and stops the stack on the way out. The embedder's HTTP API is on ``http_port`` (-1: off;
    its key is ``EMBEDSEARCH_API_KEY`` in ``env``)."""
    ports = {name: free_port() for name in ("gateway", "embedder", "store")}
    metrics = {name: free_port() for name in ports}
    command = up_command(data_dir, "127.0.0.1", ports, metrics, embedder_python, http_port)
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if "embedsearch is up" in line:
                break
        else:
            raise Unavailable("embedsearch up exited before it was serving")
        yield f"127.0.0.1:{ports['gateway']}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    try:
        require_server_extra(f"embedsearch {args.command}")
    except FailedPrecondition as exc:
        print(f"embedsearch: {exc}", file=sys.stderr)
        return 2
    if args.command in JOBS:
        from ray_jobs.cli import main as run_job

        return run_job([args.command, *rest])
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return up(args)


if __name__ == "__main__":
    sys.exit(main())
