"""Container health probe over TLS: exit 0 when this pod's service answers SERVING.

The kubelet's native gRPC probe speaks plaintext only. With TLS on (deploy/k8s/components/tls),
the probe runs this script inside the container instead. It finds the service in its own
environment (the GATEWAY_*, EMBEDDER_* or STORE_* settings from the service's ConfigMap), calls
grpc.health.v1 on 127.0.0.1 with the same certificate files the service serves, and presents
that certificate as a client certificate when the service requires one (mutual TLS). It
expects the certificate to name the service (gateway, embedder, store), or the name in
HEALTHCHECK_SERVER_NAME.

    python healthcheck.py            # in the container: prefix and files from the environment
    python healthcheck.py STORE      # name the service when several prefixes are set
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_PORTS = {"GATEWAY": 50050, "EMBEDDER": 50051, "STORE": 50052}
TIMEOUT_S = 4.0


def _read(path: str) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as handle:
        return handle.read()


def service_prefix(env: dict[str, str]) -> str:
    """The one service whose settings are in ``env``."""
    found = [p for p in DEFAULT_PORTS if any(k.startswith(f"{p}_") for k in env)]
    if len(found) != 1:
        raise SystemExit(f"healthcheck: cannot tell the service from the environment: {found}")
    return found[0]


def channel_for(prefix: str, env: dict[str, str]) -> grpc.Channel:
    """A channel to the service on loopback, over TLS when the service serves TLS."""
    port = env.get(f"{prefix}_PORT", str(DEFAULT_PORTS[prefix]))
    target = f"127.0.0.1:{port}"
    cert_file = env.get(f"{prefix}_TLS_CERT_FILE", "")
    if not cert_file:
        return grpc.insecure_channel(target)
    client_ca = env.get(f"{prefix}_TLS_CLIENT_CA_FILE", "")
    # The CA that signed the service's certificate: the one it trusts for clients, or the one the
    # gateway trusts for its peers (the same CA in deploy/k8s/components/tls).
    ca = client_ca or env.get("GATEWAY_PEER_TLS_CA_FILE", "")
    mutual = bool(client_ca)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(ca),
        private_key=_read(env[f"{prefix}_TLS_KEY_FILE"]) if mutual else None,
        certificate_chain=_read(cert_file) if mutual else None,
    )
    # The certificate names the Service (gateway, embedder, store), not 127.0.0.1.
    server_name = env.get("HEALTHCHECK_SERVER_NAME", prefix.lower())
    override = ("grpc.ssl_target_name_override", server_name)
    return grpc.secure_channel(target, credentials, options=[override])


def main(argv: list[str]) -> int:
    env = dict(os.environ)
    prefix = argv[0].upper() if argv else service_prefix(env)
    with channel_for(prefix, env) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S
            )
        except grpc.RpcError as exc:
            print(f"{prefix.lower()}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{prefix.lower()}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
