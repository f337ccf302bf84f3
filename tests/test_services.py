"""Operational behaviour of each service: health, reflection, metrics, settings, shutdown."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from conftest import QUIET
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import embedsearch
from embedder_service.server import create_server as create_embedder
from embedder_service.settings import EmbedderSettings
from embedsearch.embeddings import get_registry
from embedsearch.pydantic import LanceModel, Vector
from embedsearch.v1 import store_pb2, store_pb2_grpc
from gateway.server import create_server as create_gateway
from gateway.settings import GatewaySettings
from service_kit.cli import up_command
from service_kit.launch import free_port, service_process
from store_service.server import create_server as create_store
from store_service.settings import StoreSettings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health(address: str, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_every_service_is_serving_with_reflection(stack):
    for address, service in [
        (stack.gateway, "embedsearch.v1.Gateway"),
        (stack.embedder, "embedsearch.v1.Embedder"),
        (stack.store, "embedsearch.v1.Store"),
    ]:
        assert health(address) == SERVING
        assert health(address, service) == SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(address))
        reply = next(
            stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        )
        names = {s.name for s in reply.list_services_response.service}
        assert {service, "grpc.health.v1.Health"} <= names


def test_not_serving_until_ready(servers, stack):
    """A gateway whose embedder never answers, and an embedder whose preload fails, both stay
    NOT_SERVING while their ports already accept calls."""
    dead = f"127.0.0.1:{free_port()}"
    gateway = servers.start(
        create_gateway, GatewaySettings(embedder_addr=dead, store_addr=stack.store, **QUIET)
    )
    broken = servers.start(create_embedder, EmbedderSettings(preload="no-such-provider", **QUIET))
    time.sleep(1.0)
    assert health(gateway) == NOT_SERVING
    assert health(broken) == NOT_SERVING


def test_metrics_endpoint_counts_requests(servers, tmp_path):
    port = free_port()
    settings = StoreSettings(data_root=str(tmp_path), **{**QUIET, "metrics_port": port})
    address = servers.start(create_store, settings)
    stub = store_pb2_grpc.StoreStub(grpc.insecure_channel(address))
    stub.ListTables(store_pb2.StoreListTablesRequest())
    with pytest.raises(grpc.RpcError):
        stub.DescribeTable(store_pb2.StoreDescribeTableRequest(name="missing"))

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

    assert 'store_requests_total{code="OK",method="ListTables"} 1.0' in text
    assert 'store_requests_total{code="NOT_FOUND",method="DescribeTable"} 1.0' in text
    assert 'store_request_duration_seconds_bucket{le="0.001",method="ListTables"}' in text


def test_settings_from_flags_and_env(monkeypatch):
    monkeypatch.setenv("STORE_DATA_ROOT", "/from/env")
    monkeypatch.setenv("STORE_PORT", "6000")
    settings = StoreSettings.from_cli(["--port", "7000", "--metrics-port", "-1"])
    assert (settings.data_root, settings.port, settings.metrics_port) == ("/from/env", 7000, -1)
    assert (
        EmbedderSettings().port == 50051
        and GatewaySettings(embedder_addr="e", store_addr="s").port == 50050
    )


def test_gateway_without_peers_stops_with_a_clear_message():
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    out = subprocess.run(
        [sys.executable, "-m", "gateway"], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode != 0
    assert "--embedder-addr (or GATEWAY_EMBEDDER_ADDR)" in out.stderr
    assert "--store-addr (or GATEWAY_STORE_ADDR)" in out.stderr


def test_store_entry_point_stops_gracefully_on_sigterm(tmp_path):
    store = service_process("store_service", "--data-root", str(tmp_path), output=subprocess.PIPE)
    with store as (_, proc):
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert '"msg": "store shutting down' in output  # structured JSON log lines


@pytest.mark.slow
def test_embedsearch_up_serves_the_seed_flow_and_stops_all_three(tmp_path):
    ports = {name: free_port() for name in ("gateway", "embedder", "store")}
    metrics = {name: free_port() for name in ports}
    command = up_command(str(tmp_path / "data"), "127.0.0.1", ports, metrics)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "embedsearch is up" in line:
                break
        assert "embedsearch is up" in "".join(lines), "".join(lines)
        for name in ports:
            assert health(f"127.0.0.1:{ports[name]}") == SERVING
        for internal in ("embedder", "store"):  # only the gateway faces clients
            assert listening_hosts(ports[internal]) == {"127.0.0.1"}

        func = get_registry().get("sentence-transformers").create()

        class Doc(LanceModel):
            text: str = func.SourceField()
            vector: Vector(384) = func.VectorField()

        db = embedsearch.connect(f"grpc://127.0.0.1:{ports['gateway']}")
        table = db.create_table("docs", schema=Doc)
        table.add([{"text": "hello world"}, {"text": "goodbye moon"}])
        assert table.search("hi world").limit(1).to_list()[0]["text"] == "hello world"
        assert Path(tmp_path / "data" / "docs.lance").is_dir()
        for name in ports:
            scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics[name]}/metrics", timeout=5)
            assert f"{name}_requests_total" in scraped.read().decode()
            assert listening_hosts(metrics[name]) == {"127.0.0.1"}  # /metrics on loopback

        # Embedder and store want the token `up` made up, which only the gateway has: it went
        # through the environment, not the command line.
        store = store_pb2_grpc.StoreStub(grpc.insecure_channel(f"127.0.0.1:{ports['store']}"))
        drop = store_pb2.StoreDropTableRequest(name="docs")
        with pytest.raises(grpc.RpcError) as refused:
            store.DropTable(drop, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        services = children(proc.pid)
        token = services["store_service"]["STORE_AUTH_TOKENS"]
        assert len(token) >= 32 and services["gateway"]["GATEWAY_PEER_TOKEN"] == token
        assert all(token not in env["cmdline"] for env in services.values())
        assert table.count_rows() == 2

        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        proc.kill()  # the services die with the launcher (PR_SET_PDEATHSIG), even on failure
    assert proc.returncode == 0
    for name in ports:
        with pytest.raises(grpc.RpcError):
            health(f"127.0.0.1:{ports[name]}")


def test_services_die_with_a_killed_launcher(tmp_path):
    ports = {name: free_port() for name in ("gateway", "embedder", "store")}
    metrics = {name: -1 for name in ports}
    command = up_command(str(tmp_path / "data"), "127.0.0.1", ports, metrics)
    env = {**os.environ, "EMBEDDER_PRELOAD": ""}  # every flag is an env var: no model to load
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if "embedsearch is up" in line:
                break
        assert health(f"127.0.0.1:{ports['store']}") == SERVING
    finally:
        proc.kill()
        proc.wait(timeout=10)
    deadline = time.monotonic() + 20
    alive = set(ports)
    while alive and time.monotonic() < deadline:
        for name in list(alive):
            try:
                health(f"127.0.0.1:{ports[name]}")
            except grpc.RpcError:
                alive.discard(name)
        time.sleep(0.2)
    assert not alive, f"still running after the launcher was killed: {alive}"


def children(pid: int) -> dict[str, dict[str, str]]:
    """The environment of each child of ``pid`` by its ``-m`` module, plus its command line
    under ``cmdline`` (from /proc: the same user may read both)."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit():
                continue
            parent = (proc / "stat").read_text().rpartition(")")[2].split()[1]
            if int(parent) != pid:
                continue
            argv = (proc / "cmdline").read_bytes().decode().split("\0")
            environ = (proc / "environ").read_bytes().decode().split("\0")
        except OSError:  # gone meanwhile
            continue
        env = dict(entry.partition("=")[::2] for entry in environ if entry)
        found[argv[argv.index("-m") + 1]] = {**env, "cmdline": " ".join(argv)}
    return found


def listening_hosts(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on ``port``, from /proc/net/tcp{,6}."""
    hosts = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.rpartition(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    raw = bytes.fromhex(address)
                    words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
                    ip = ipaddress.ip_address(b"".join(words))
                    hosts.add(str(getattr(ip, "ipv4_mapped", None) or ip))
    return hosts
