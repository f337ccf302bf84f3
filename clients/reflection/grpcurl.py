"""grpcurl's list, describe and unary calls in Python, through server reflection alone.

Nothing of embedsearch is imported and no .proto file is read: the descriptors come from the
server's reflection service, as grpcurl gets them. The arguments are grpcurl's:

    python grpcurl.py -plaintext localhost:50050 list
    python grpcurl.py -plaintext localhost:50050 describe embedsearch.v1.Gateway
    python grpcurl.py -plaintext -H 'authorization: Bearer TOKEN' \
        -d '{"table": "docs", "text": "hi"}' localhost:50050 embedsearch.v1.Gateway/Search
"""

from __future__ import annotations

import argparse
import sys

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grpcurl.py", description=__doc__.split("\n")[0])
    parser.add_argument("-plaintext", action="store_true", help="no TLS")
    parser.add_argument("-cacert", default="", help="PEM CA of the server's certificate")
    parser.add_argument("-H", dest="headers", action="append", default=[], help="'name: value'")
    parser.add_argument("-d", dest="data", default="{}", help="request as JSON")
    parser.add_argument("address")
    parser.add_argument("verb", help="list, describe, or Service/Method")
    parser.add_argument("symbol", nargs="?", default="")
    return parser


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if args.plaintext:
        return grpc.insecure_channel(args.address)
    ca = None
    if args.cacert:
        with open(args.cacert, "rb") as handle:
            ca = handle.read()
    return grpc.secure_channel(args.address, grpc.ssl_channel_credentials(ca))


def describe(service: ServiceDescriptor) -> str:
    lines = [f"{service.full_name} is a service:"]
    for method in service.methods:
        request = ("stream " if method.client_streaming else "") + method.input_type.full_name
        reply = ("stream " if method.server_streaming else "") + method.output_type.full_name
        lines.append(f"  rpc {method.name}({request}) returns ({reply});")
    return "\n".join(lines)


def call(
    channel: grpc.Channel,
    pool: DescriptorPool,
    name: str,
    data: str,
    metadata: list[tuple[str, str]],
) -> str:
    """Invoke a unary method by its full name with a JSON request; the reply as JSON."""
    service_name, _, method_name = name.replace("/", ".").rpartition(".")
    method = pool.FindServiceByName(service_name).FindMethodByName(method_name)
    if method.client_streaming or method.server_streaming:
        raise SystemExit(f"{name} streams; this tool calls unary methods only")
    request_class = message_factory.GetMessageClass(method.input_type)
    reply_class = message_factory.GetMessageClass(method.output_type)
    stub = channel.unary_unary(
        f"/{service_name}/{method_name}",
        request_serializer=request_class.SerializeToString,
        response_deserializer=reply_class.FromString,
    )
    request = json_format.Parse(data, request_class(), descriptor_pool=pool)
    reply = stub(request, metadata=metadata, timeout=120)
    return json_format.MessageToJson(reply, descriptor_pool=pool, indent=2)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    metadata: list[tuple[str, str]] = []
    for header in args.headers:
        key, _, value = header.partition(":")
        metadata.append((key.strip().lower(), value.strip()))
    with _channel(args) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = DescriptorPool(database)
        try:
            if args.verb == "list":
                print("\n".join(sorted(database.get_services())))
            elif args.verb == "describe":
                print(describe(pool.FindServiceByName(args.symbol)))
            else:
                print(call(channel, pool, args.verb, args.data, metadata))
        except grpc.RpcError as exc:
            print(f"ERROR:\n  Code: {exc.code().name}\n  Message: {exc.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
