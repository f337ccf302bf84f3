"""Who may call: bearer tokens on the gateway, TLS and mutual TLS on every hop, and secrets that
never reach disk, logs or metrics."""

from __future__ import annotations

import datetime
import ipaddress
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from api_doubles import OpenAIDouble
from conftest import QUIET
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import expect_code

import embedsearch
import service_kit.auth as auth
from embedder_service.server import create_server as create_embedder
from embedder_service.settings import EmbedderSettings
from embedsearch.contract.channels import channel_credentials, wait_until_serving
from embedsearch.contract.errors import PermissionDenied, Unauthenticated
from embedsearch.embeddings import get_registry
from embedsearch.pydantic import LanceModel, Vector
from embedsearch.v1 import gateway_pb2, gateway_pb2_grpc
from gateway.server import create_server as create_gateway
from gateway.settings import GatewaySettings
from service_kit.auth import parse_tokens
from service_kit.launch import free_port, service_process
from store_service.server import create_server as create_store
from store_service.settings import StoreSettings

# -- bearer tokens ---------------------------------------------------------------------------


def test_token_entries_parse_with_their_access():
    tokens = parse_tokens(["# ops team", "", "alpha", "beta:ro", "gam:ma:rw", "  delta:ro  "])
    by_access = sorted(tokens.values())
    assert by_access == [False, False, True, True]
    assert auth._digest("gam:ma") in tokens  # only a trailing :ro/:rw is an access
    assert tokens[auth._digest("delta")] is False


@pytest.fixture
def guarded(servers, stack, tmp_path, monkeypatch):
    """A gateway over the shared embedder and store that wants a token from a file."""
    monkeypatch.setattr(auth, "RELOAD_EVERY_S", 0.0)
    tokens = tmp_path / "tokens"
    tokens.write_text("writer-token\nreader-token:ro\n")
    settings = GatewaySettings(
        embedder_addr=stack.embedder,
        store_addr=stack.store,
        auth_tokens_file=str(tokens),
        **QUIET,
    )
    address = servers.start(create_gateway, settings)
    wait_until_serving(address, 60)  # health answers without a token: probes carry none
    return address, tokens


def call_with(address: str, token: str | None, method: str, request: object) -> object:
    stub = gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(address))
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    return getattr(stub, method)(request, metadata=metadata, timeout=30)


def test_no_token_or_a_wrong_one_is_unauthenticated(guarded):
    address, _ = guarded
    listing = gateway_pb2.ListTablesRequest()
    expect_code(
        grpc.StatusCode.UNAUTHENTICATED,
        lambda: call_with(address, None, "ListTables", listing),
        "authorization: Bearer",
        reason="UNAUTHENTICATED",
    )
    expect_code(
        grpc.StatusCode.UNAUTHENTICATED,
        lambda: call_with(address, "writer-tokeN", "ListTables", listing),
        "not valid",
        reason="UNAUTHENTICATED",
    )
    with pytest.raises(Unauthenticated):
        embedsearch.connect(f"grpc://{address}", api_key="nope").list_tables()


def test_read_only_token_reads_but_cannot_write(guarded, table_name):
    address, _ = guarded
    writer = embedsearch.connect(f"grpc://{address}", api_key="writer-token")
    reader = embedsearch.connect(f"grpc://{address}", api_key="reader-token")
    func = get_registry().get("sentence-transformers").create()

    class Doc(LanceModel):
        text: str = func.SourceField()
        vector: Vector(384) = func.VectorField()

    table = writer.create_table(table_name, schema=Doc)
    table.add([{"text": "the gate keeper"}])
    mine = reader.open_table(table_name)
    assert mine.search("keeper").limit(1).to_list()[0]["text"] == "the gate keeper"
    assert mine.count_rows() == 1
    with pytest.raises(PermissionDenied, match="read-only") as refused:
        mine.add([{"text": "sneaked in"}])
    assert refused.value.reason == "PERMISSION_DENIED"
    with pytest.raises(PermissionDenied):
        reader.drop_table(table_name)
    with pytest.raises(PermissionDenied):
        reader.create_table(f"{table_name}_2", schema=Doc)
    assert table.count_rows() == 1 and table_name in writer
    assert f"{table_name}_2" not in writer


def test_rotated_token_file_takes_effect_without_restart(guarded):
    address, tokens = guarded
    listing = gateway_pb2.ListTablesRequest()
    call_with(address, "writer-token", "ListTables", listing)
    tokens.write_text("rotated-token\n")
    call_with(address, "rotated-token", "ListTables", listing)
    expect_code(
        grpc.StatusCode.UNAUTHENTICATED,
        lambda: call_with(address, "writer-token", "ListTables", listing),
    )


def test_unreadable_token_file_stops_start_up(servers, stack, tmp_path):
    settings = GatewaySettings(
        embedder_addr=stack.embedder,
        store_addr=stack.store,
        auth_tokens_file=str(tmp_path / "missing"),
        **QUIET,
    )
    with pytest.raises(Exception, match="--auth-tokens-file"):
        servers.start(create_gateway, settings)


# -- TLS ---------------------------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _issue(
    directory: Path, name: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None
) -> tuple[x509.Name, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(issuer_key, hashes.SHA256())
    (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return subject, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    """A throwaway CA, a server certificate for localhost and a client certificate."""
    directory = tmp_path_factory.mktemp("pki")
    ca = _issue(directory, "ca", None)
    _issue(directory, "server", ca)
    _issue(directory, "client", ca)
    return Pki(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )


def test_the_whole_stack_over_tls_with_mutual_tls_inside(servers, pki, tmp_path, table_name):
    serve_tls = {"tls_cert_file": str(pki.server_cert), "tls_key_file": str(pki.server_key)}
    mutual = {**serve_tls, "tls_client_ca_file": str(pki.ca)}
    embedder = servers.start(create_embedder, EmbedderSettings(**QUIET, **mutual))
    store = servers.start(create_store, StoreSettings(data_root=str(tmp_path), **QUIET, **mutual))
    settings = GatewaySettings(
        embedder_addr=embedder.replace("127.0.0.1", "localhost"),
        store_addr=store.replace("127.0.0.1", "localhost"),
        peer_tls_ca_file=str(pki.ca),
        peer_tls_cert_file=str(pki.client_cert),
        peer_tls_key_file=str(pki.client_key),
        **QUIET,
        **serve_tls,
    )
    address = servers.start(create_gateway, settings).replace("127.0.0.1", "localhost")
    wait_until_serving(address, 120, channel_credentials(str(pki.ca)))

    db = embedsearch.connect(f"grpcs://{address}", tls_ca_file=str(pki.ca))
    func = get_registry().get("sentence-transformers").create()

    class Doc(LanceModel):
        text: str = func.SourceField()
        vector: Vector(384) = func.VectorField()

    table = db.create_table(table_name, schema=Doc)
    table.add([{"text": "sealed envelope"}, {"text": "open field"}])
    assert table.search("an envelope").limit(1).to_list()[0]["text"] == "sealed envelope"

    # Plaintext is refused by the TLS gateway, and the store wants the client certificate.
    plain = gateway_pb2_grpc.GatewayStub(grpc.insecure_channel(address))
    expect_code(
        grpc.StatusCode.UNAVAILABLE, lambda: plain.ListTables(gateway_pb2.ListTablesRequest())
    )
    no_client_cert = grpc.secure_channel(store, channel_credentials(str(pki.ca)))
    with pytest.raises(grpc.RpcError) as refused:
        health_pb2_grpc.HealthStub(no_client_cert).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_settings_must_come_in_pairs():
    with pytest.raises(ValueError, match="--tls-key-file"):
        StoreSettings(data_root="/tmp/x", tls_cert_file="/a.crt", **QUIET)
    with pytest.raises(ValueError, match="--tls-cert-file too"):
        StoreSettings(data_root="/tmp/x", tls_client_ca_file="/ca.crt", **QUIET)


# -- secrets -----------------------------------------------------------------------------------

ENV_KEY = "sk-env-7f3c9a1e5d2b4c6a8e0f"
LITERAL_KEY = "sk-literal-0d9e8c7b6a5f4e3d2c1b"


def test_api_keys_never_reach_lance_metadata_logs_or_metrics(tmp_path):
    """Keys given by env and given inline reach the provider, and nothing we write: the Lance
    files, the three services' logs at DEBUG, and their /metrics."""
    double = OpenAIDouble(ndims=8)
    double.failures.extend([429])  # a retry, so the provider's error path logs too
    metrics = {name: free_port() for name in ("embedder", "store", "gateway")}
    data = tmp_path / "data"
    scraped: dict[str, str] = {}
    common = ("--log-level", "DEBUG")
    # Logs go to files: a pipe nobody reads while the test runs fills up and stalls the service.
    log_files = {name: (tmp_path / f"{name}.log").open("w") for name in metrics}
    try:
        with (
            service_process(
                "embedder_service",
                "--preload", "",
                "--retry-base-s", "0.01",
                "--metrics-port", str(metrics["embedder"]),
                *common,
                env={"OPENAI_API_KEY": ENV_KEY},
                output=log_files["embedder"],
            ) as (embedder, _),
            service_process(
                "store_service",
                "--data-root", str(data),
                "--metrics-port", str(metrics["store"]),
                *common,
                output=log_files["store"],
            ) as (store, _),
            service_process(
                "gateway",
                "--embedder-addr", embedder,
                "--store-addr", store,
                "--metrics-port", str(metrics["gateway"]),
                *common,
                output=log_files["gateway"],
            ) as (address, _),
        ):  # fmt: skip
            db = embedsearch.connect(f"grpc://{address}")
            registry = get_registry().get("openai")
            from_env = registry.create(base_url=double.base_url, dim=8)
            inline = registry.create(base_url=double.base_url, dim=8, api_key=LITERAL_KEY)
            for name, func in (("keys_env", from_env), ("keys_inline", inline)):

                class Doc(LanceModel):
                    text: str = func.SourceField()
                    vector: Vector(8) = func.VectorField()

                table = db.create_table(name, schema=Doc)
                table.add([{"text": "a secret"}, {"text": "kept"}])
                assert len(table.search("secret").limit(1).to_list()) == 1
            assert len(inline.generate_embeddings(["client-side mode"])) == 1
            for name, port in metrics.items():
                url = f"http://127.0.0.1:{port}/metrics"
                scraped[name] = urllib.request.urlopen(url, timeout=5).read().decode()
    finally:
        double.close()
        for file in log_files.values():
            file.close()
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in metrics}

    assert f"Bearer {ENV_KEY}" in double.auth_headers  # both keys were really used
    assert f"Bearer {LITERAL_KEY}" in double.auth_headers
    assert "retry" in logs["embedder"]  # the logs are real and cover the failure path
    assert "embedder_requests_total" in scraped["embedder"]
    lance_files = [p for p in data.rglob("*") if p.is_file()]
    assert any(p.suffix == ".manifest" for p in lance_files)
    for key in (ENV_KEY, LITERAL_KEY):
        for path in lance_files:
            assert key.encode() not in path.read_bytes(), path
        for name, text in [*logs.items(), *scraped.items()]:
            assert key not in text, name
