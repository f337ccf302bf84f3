"""Clients of the embedder and the store: typed values in and out, the peers' messages built
and read here; failed calls come back as typed errors."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import grpc
import numpy as np
import pyarrow as pa
from google.protobuf.message import Message

from embedsearch.contract.channels import aio_channel, channel_credentials, typed_errors
from embedsearch.contract.convert import (
    CREATE_MODE_TO_PB,
    index_from_pb,
    index_params_to_pb,
    index_stats_from_pb,
    index_type_to_pb,
    metric_to_pb,
    projections_to_pb,
    spec_to_pb,
    value_to_pb,
)
from embedsearch.contract.errors import Internal, InvalidArgument, Unavailable
from embedsearch.contract.multivector import MultiVectors
from embedsearch.contract.status import details_of
from embedsearch.contract.values import IndexInfo, IndexStats
from embedsearch.contract.wire import ipc_to_schema, schema_to_ipc, table_to_ipc
from embedsearch.v1 import embedder_pb2, embedder_pb2_grpc, store_pb2, store_pb2_grpc
from gateway.convert import (
    embed_call_to_pb,
    embedded_from_pb,
    provider_from_pb,
    resolved_from_pb,
    store_request_to_pb,
    version_from_pb,
    write_from_pb,
)
from gateway.convert_rerank import rerank_call_to_pb, scores_from_pb
from gateway.convert_schema import SchemaMaintenanceStore
from gateway.media import MediaReader
from gateway.settings import GatewaySettings
from gateway.values import (
    CreateIndex,
    EmbedCall,
    Embedded,
    MergeInsert,
    Provider,
    Read,
    RerankCall,
    Resolved,
    Scan,
    Search,
    StoreTable,
    TableVersion,
    Take,
    WriteResult,
)
from service_kit.auth import PeerToken
from service_kit.deadline import remaining
from service_kit.tracing import Tracing

# Inputs per Embed request (under the embedder's default --max-inputs-per-request, 2048), and
# such requests in flight per embed.
EMBED_REQUEST_INPUTS = 1024
EMBED_REQUESTS_IN_FLIGHT = 2
# Inputs per request where media are read: at most 2 x 16 x --media-max-bytes held at once.
MEDIA_REQUEST_INPUTS = 16
# Internal calls without a client deadline still end: a hung peer must not hang the gateway.
DEFAULT_TIMEOUT_S = 300.0


class Peer:
    """A channel and stub to one internal service. ``call`` forwards the caller's deadline;
    every call carries the gateway's bearer token, when it has one (``--peer-token-file``)."""

    kind: ClassVar[str] = ""
    stub_class: ClassVar[Any] = None

    def __init__(
        self,
        address: str,
        max_message_bytes: int,
        credentials: grpc.ChannelCredentials | None = None,
        token: PeerToken | None = None,
        interceptors: list[grpc.aio.ClientInterceptor] | None = None,
    ) -> None:
        self.name = f"{self.kind} at {address}"
        self.token = token
        self.channel = aio_channel(address, max_message_bytes, credentials, interceptors)
        self.stub = self.stub_class(self.channel)

    async def call(self, method: str, request: Any) -> Any:
        """Invoke ``method`` with the time the incoming call has left."""
        timeout = remaining(DEFAULT_TIMEOUT_S)
        with typed_errors(self.name):
            return await getattr(self.stub, method)(
                request, timeout=timeout, metadata=self._metadata()
            )

    async def stream(self, method: str, requests: AsyncIterator[Any]) -> Any:
        """A client-streaming call: send every request, then await the reply. If producing the
        requests fails, the call is cancelled (the peer commits nothing) and the error raised.
        If the peer ends the call first (it failed, or went away), its status is raised."""
        # No default deadline: the caller's stream sets the pace, however long the ingest.
        call = getattr(self.stub, method)(timeout=remaining(None), metadata=self._metadata())
        with typed_errors(self.name):
            try:
                async for request in requests:
                    await call.write(request)
                await call.done_writing()
            except asyncio.InvalidStateError:
                # Writing to a call that has ended: awaiting it raises its real status
                # (UNAVAILABLE for a peer that died), as a typed error.
                await call
                raise Internal(f"{self.name} answered {method} before the stream ended") from None
            except grpc.aio.AioRpcError as err:
                # A message the transport failed to send (the peer died under it): grpc ends
                # the call INTERNAL on this side, with none of the details a peer's own error
                # carries. Its code would blame the peer's code, not its going away.
                if err.code() == grpc.StatusCode.INTERNAL and not details_of(err).reason:
                    raise Unavailable(
                        f"{self.name} is unavailable: it went away during {method} "
                        f"({err.details()})"
                    ) from None
                raise
            except BaseException:
                call.cancel()
                raise
            return await call

    async def replies(self, method: str, request: Any) -> AsyncIterator[Any]:
        """A server-streaming call's replies. No default deadline: the caller reads for as
        long as it keeps reading."""
        call = getattr(self.stub, method)(
            request, timeout=remaining(None), metadata=self._metadata()
        )
        with typed_errors(self.name):
            async for reply in call:
                yield reply

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return self.token.metadata() if self.token else ()

    async def close(self) -> None:
        await self.channel.close()


class EmbedderClient(Peer):
    """The embedder: resolves functions and embeds inputs."""

    kind = "embedder"
    stub_class = embedder_pb2_grpc.EmbedderStub

    async def resolve(self, provider: str, args: dict[str, Any]) -> Resolved:
        reply = await self.call("ResolveFunction", resolve_to_pb(provider, args))
        return resolved_from_pb(reply)

    async def list_providers(self) -> list[Provider]:
        reply = await self.call("ListProviders", embedder_pb2.ListProvidersRequest())
        return [provider_from_pb(p) for p in reply.providers]

    async def embed_once(self, call: EmbedCall) -> Embedded:
        """The vectors of one Embed request, one row per input."""
        return embedded_from_pb(await self.call("Embed", embed_call_to_pb(call)))

    async def embed(
        self,
        provider: str,
        args: dict[str, Any],
        mode: str,
        inputs: Sequence[str | bytes],
        media: MediaReader | None = None,
    ) -> np.ndarray | MultiVectors:
        """Vectors for texts, or for encoded images and other binary inputs; a multi-vector
        function's come as :class:`MultiVectors`. With ``media``, strings that name files or
        URLs are read first, a part at a time, so a large add never holds all their bytes.

        Inputs go in requests of at most EMBED_REQUEST_INPUTS (MEDIA_REQUEST_INPUTS where
        media are read; the embedder bounds a request by --max-inputs-per-request), two at a
        time: one is tokenized while the model runs the other, and a large add never floods
        the embedder's queue.
        """
        slots = asyncio.Semaphore(EMBED_REQUESTS_IN_FLIGHT)

        async def one(part: Sequence[str | bytes]) -> np.ndarray | MultiVectors:
            async with slots:
                if media is not None:
                    part = await media.resolve(part)
                return await self._embed_mixed(EmbedCall(provider, args, mode), part)

        step = EMBED_REQUEST_INPUTS if media is None else MEDIA_REQUEST_INPUTS
        parts = [inputs[i : i + step] for i in range(0, len(inputs), step)] or [inputs]
        if len(parts) == 1:  # a query, most often: awaited here, with no task to schedule
            return await one(parts[0])
        vectors = await asyncio.gather(*(one(part) for part in parts))
        if isinstance(vectors[0], MultiVectors):
            return MultiVectors.concat(vectors)  # type: ignore[arg-type]
        return np.concatenate(vectors)

    async def _embed_mixed(
        self, call: EmbedCall, inputs: Sequence[str | bytes]
    ) -> np.ndarray | MultiVectors:
        """One request per kind of input: texts, and blobs (whose modality the embedder
        tells from their bytes); the vectors come back in the inputs' order."""
        is_blob = np.array([isinstance(value, bytes) for value in inputs], dtype=bool)
        kinds = [kind for kind in (~is_blob, is_blob) if kind.any()] or [~is_blob]
        results = []
        for kind in kinds:
            chosen = [inputs[i] for i in np.flatnonzero(kind)]
            part = dataclasses.replace(call)
            if kind is is_blob:
                part.blobs = [(bytes(value), "") for value in chosen]
            else:
                part.texts = [str(value) for value in chosen]
            embedded = await self.embed_once(part)
            if embedded.vectors_per_input:
                if len(kinds) > 1:
                    raise InvalidArgument(
                        f"{call.provider!r} gives several vectors per input, and takes texts "
                        "or blobs in one request, not both"
                    )
                return MultiVectors.unpacked(embedded.vectors, embedded.vectors_per_input)
            results.append((kind, embedded.vectors))
        if len(results) == 1:
            return results[0][1]
        vectors = np.empty((len(inputs), results[0][1].shape[1]), dtype=results[0][1].dtype)
        for kind, part_vectors in results:
            vectors[kind] = part_vectors
        return vectors

    async def rerank(self, call: RerankCall) -> np.ndarray:
        """One score per document, from a model-backed reranker."""
        reply = await self.call("Rerank", rerank_call_to_pb(call))
        return scores_from_pb(reply, len(call.documents))


class StoreClient(SchemaMaintenanceStore, Peer):
    """The store: each method builds one store request from typed values and reads the reply."""

    kind = "store"
    stub_class = store_pb2_grpc.StoreStub

    async def describe(self, name: str, version: int = 0) -> StoreTable:
        return table_from_pb(await self.call("DescribeTable", describe_to_pb(name, version)))

    async def create_table(
        self, name: str, schema: pa.Schema, mode: str, rows: pa.Table | None
    ) -> StoreTable:
        request = create_table_to_pb(name, schema, mode, rows)
        return table_from_pb(await self.call("CreateTable", request))

    async def list_tables(self, start_after: str, limit: int) -> list[str]:
        reply = await self.call("ListTables", list_tables_to_pb(start_after, limit))
        return list(reply.names)

    async def drop_table(self, name: str, ignore_missing: bool) -> None:
        await self.call("DropTable", drop_table_to_pb(name, ignore_missing))

    async def add(
        self, name: str, rows: pa.Table, fingerprint: str, overwrite: bool = False
    ) -> WriteResult:
        request = add_to_pb(name, rows, fingerprint, overwrite)
        return write_from_pb(await self.call("Add", request))

    async def add_stream(
        self, name: str, chunks: AsyncIterator[pa.Table], fingerprint: str, overwrite: bool
    ) -> WriteResult:
        """Stream the chunks into one commit; the first message names the table."""

        async def requests() -> AsyncIterator[store_pb2.StoreAddRequest]:
            async for rows in chunks:
                yield add_to_pb(name, rows, fingerprint, overwrite)
            # The store commits only a stream that says it is complete: to its server a
            # stream cancelled between two messages looks like one that ended.
            yield add_to_pb(name, None, fingerprint, overwrite)

        return write_from_pb(await self.stream("AddStream", requests()))

    async def merge_insert(
        self, merge: MergeInsert, rows: pa.Table, fingerprint: str
    ) -> WriteResult:
        request = merge_insert_to_pb(merge, rows, fingerprint)
        return write_from_pb(await self.call("MergeInsert", request))

    async def delete(self, name: str, where: str) -> WriteResult:
        return write_from_pb(await self.call("Delete", delete_to_pb(name, where)))

    async def update(self, name: str, where: str, updates: dict[str, str]) -> WriteResult:
        return write_from_pb(await self.call("Update", update_to_pb(name, where, updates)))

    async def count_rows(self, name: str, where: str, version: int) -> int:
        return (await self.call("CountRows", count_rows_to_pb(name, where, version))).count

    async def search(
        self, search: Search, column: str, vector: np.ndarray, with_row_id: bool, fingerprint: str
    ) -> bytes:
        """The results' Arrow IPC stream, as the store sent it."""
        request = vector_search_to_pb(search, column, vector, with_row_id, fingerprint)
        return (await self.call("Search", request)).arrow_ipc

    async def text_search(self, search: Search, with_row_id: bool, fingerprint: str) -> bytes:
        """The results' Arrow IPC stream, as the store sent it."""
        request = text_search_to_pb(search, with_row_id, fingerprint)
        return (await self.call("TextSearch", request)).arrow_ipc

    async def read(self, read: Read) -> AsyncIterator[bytes]:
        """The rows' record batches, each an Arrow IPC stream as the store sent it."""
        async for reply in self.replies("Read", read_to_store_pb(read)):
            yield reply.arrow_ipc

    async def take(self, take: Take) -> AsyncIterator[bytes]:
        """The rows' record batches, each an Arrow IPC stream as the store sent it."""
        async for reply in self.replies("Take", take_to_pb(take)):
            yield reply.arrow_ipc

    async def search_stream(
        self, search: Search, column: str, vector: np.ndarray, fingerprint: str
    ) -> AsyncIterator[bytes]:
        """A vector search's record batches, each an Arrow IPC stream as the store sent it."""
        request = vector_search_to_pb(search, column, vector, search.with_row_id, fingerprint)
        async for reply in self.replies("SearchStream", request):
            yield reply.arrow_ipc

    async def explain_read(self, read: Read, verbose: bool) -> str:
        return await self._explain(explain_to_pb(verbose, scan=read_to_store_pb(read)))

    async def explain_search(
        self, search: Search, column: str, vector: np.ndarray, fingerprint: str, verbose: bool
    ) -> str:
        query = vector_search_to_pb(search, column, vector, search.with_row_id, fingerprint)
        return await self._explain(explain_to_pb(verbose, search=query))

    async def explain_text_search(self, search: Search, fingerprint: str, verbose: bool) -> str:
        query = text_search_to_pb(search, search.with_row_id, fingerprint)
        return await self._explain(explain_to_pb(verbose, text_search=query))

    async def _explain(self, request: store_pb2.StoreExplainPlanRequest) -> str:
        return (await self.call("ExplainPlan", request)).plan

    async def rename_table(self, name: str, new_name: str) -> StoreTable:
        request = rename_table_to_pb(name, new_name)
        return table_from_pb(await self.call("RenameTable", request))

    async def scan(self, scan: Scan) -> bytes:
        """The rows' Arrow IPC stream, as the store sent it."""
        return (await self.call("Scan", scan_to_pb(scan))).arrow_ipc

    async def create_index(self, index: CreateIndex) -> IndexInfo:
        return index_from_pb(await self.call("CreateIndex", create_index_to_pb(index)))

    async def list_indexes(self, name: str) -> list[IndexInfo]:
        reply = await self.call("ListIndexes", list_indexes_to_pb(name))
        return [index_from_pb(i) for i in reply.indexes]

    async def drop_index(self, name: str, index_name: str) -> None:
        await self.call("DropIndex", drop_index_to_pb(name, index_name))

    async def index_stats(self, name: str, index_name: str) -> IndexStats:
        reply = await self.call("IndexStats", index_stats_to_pb(name, index_name))
        return index_stats_from_pb(reply)

    async def list_versions(self, name: str) -> list[TableVersion]:
        reply = await self.call("ListVersions", list_versions_to_pb(name))
        return [version_from_pb(v) for v in reply.versions]

    async def restore(self, name: str, version: int) -> WriteResult:
        return write_from_pb(await self.call("Restore", restore_to_pb(name, version)))


def connect_peers(
    settings: GatewaySettings, tracing: Tracing | None = None
) -> tuple[EmbedderClient, StoreClient]:
    """Channels to both peers, with the TLS and token settings they share; with ``tracing``,
    every call carries a CLIENT span and sends its trace context on."""
    credentials = channel_credentials(
        settings.peer_tls_ca_file, settings.peer_tls_cert_file, settings.peer_tls_key_file
    )
    token = PeerToken.configure(settings.peer_token, settings.peer_token_file)
    limit = settings.max_message_bytes
    interceptors = tracing.client_interceptors() if tracing else None
    return (
        EmbedderClient(settings.embedder_addr, limit, credentials, token, interceptors),
        StoreClient(settings.store_addr, limit, credentials, token, interceptors),
    )


# -- store requests from values, and replies to values ----------------------------------------

# Search fields the store's searches do not take: the public query, the reply's format and
# the reranker (applied by the gateway).
PUBLIC_ONLY = ("table", "query", "json_rows", "query_type", "fts_columns", "reranker")
# Search fields that tune the vector search only.
VECTOR_ONLY = (
    "vector_column",
    "metric",
    "postfilter",
    "nprobes",
    "refine_factor",
    "ef",
    "bypass_vector_index",
    "distance_lower_bound",
    "distance_upper_bound",
    "target_recall",
)


def table_from_pb(info: store_pb2.StoreTableInfo) -> StoreTable:
    return StoreTable(
        name=info.name,
        schema=ipc_to_schema(info.arrow_schema),
        version=info.version,
        num_rows=info.num_rows,
        indexes=[index_from_pb(i) for i in info.indexes],
        fingerprint=info.schema_fingerprint,
        uri=info.uri,
    )


def resolve_to_pb(provider: str, args: dict[str, Any]) -> embedder_pb2.ResolveFunctionRequest:
    return embedder_pb2.ResolveFunctionRequest(function=spec_to_pb(provider, args))


def describe_to_pb(name: str, version: int) -> store_pb2.StoreDescribeTableRequest:
    return store_pb2.StoreDescribeTableRequest(name=name, version=version)


def list_tables_to_pb(start_after: str, limit: int) -> store_pb2.StoreListTablesRequest:
    return store_pb2.StoreListTablesRequest(start_after=start_after, limit=limit)


def drop_table_to_pb(name: str, ignore_missing: bool) -> store_pb2.StoreDropTableRequest:
    return store_pb2.StoreDropTableRequest(name=name, ignore_missing=ignore_missing)


def delete_to_pb(name: str, where: str) -> store_pb2.StoreDeleteRequest:
    return store_pb2.StoreDeleteRequest(name=name, filter=where)


def update_to_pb(name: str, where: str, updates: dict[str, str]) -> store_pb2.StoreUpdateRequest:
    return store_pb2.StoreUpdateRequest(name=name, filter=where, updates=updates)


def count_rows_to_pb(name: str, where: str, version: int) -> store_pb2.StoreCountRowsRequest:
    return store_pb2.StoreCountRowsRequest(name=name, filter=where, version=version)


def list_indexes_to_pb(name: str) -> store_pb2.StoreListIndexesRequest:
    return store_pb2.StoreListIndexesRequest(name=name)


def drop_index_to_pb(name: str, index_name: str) -> store_pb2.StoreDropIndexRequest:
    return store_pb2.StoreDropIndexRequest(name=name, index_name=index_name)


def index_stats_to_pb(name: str, index_name: str) -> store_pb2.StoreIndexStatsRequest:
    return store_pb2.StoreIndexStatsRequest(name=name, index_name=index_name)


def list_versions_to_pb(name: str) -> store_pb2.StoreListVersionsRequest:
    return store_pb2.StoreListVersionsRequest(name=name)


def restore_to_pb(name: str, version: int) -> store_pb2.StoreRestoreRequest:
    return store_pb2.StoreRestoreRequest(name=name, version=version)


def create_table_to_pb(
    name: str, schema: pa.Schema, mode: str, rows: pa.Table | None
) -> store_pb2.StoreCreateTableRequest:
    return store_pb2.StoreCreateTableRequest(
        name=name,
        arrow_schema=schema_to_ipc(schema),
        mode=CREATE_MODE_TO_PB[mode],
        arrow_ipc=table_to_ipc(rows) if rows is not None else b"",
    )


def add_to_pb(
    name: str, rows: pa.Table | None, fingerprint: str, overwrite: bool
) -> store_pb2.StoreAddRequest:
    """An Add, or one message of an AddStream; ``rows`` None: the stream's last message, which
    holds no rows and says that the stream is complete."""
    if rows is None:
        return store_pb2.StoreAddRequest(
            name=name, schema_fingerprint=fingerprint, overwrite=overwrite, last=True
        )
    return store_pb2.StoreAddRequest(
        name=name, arrow_ipc=table_to_ipc(rows), schema_fingerprint=fingerprint, overwrite=overwrite
    )


def merge_insert_to_pb(
    merge: MergeInsert, rows: pa.Table, fingerprint: str
) -> store_pb2.StoreMergeInsertRequest:
    return store_request_to_pb(
        merge,
        store_pb2.StoreMergeInsertRequest,
        omit=("rows", "bad"),
        arrow_ipc=table_to_ipc(rows),
        schema_fingerprint=fingerprint,
    )


def vector_search_to_pb(
    search: Search, column: str, vector: np.ndarray, with_row_id: bool, fingerprint: str
) -> store_pb2.StoreSearchRequest:
    return store_request_to_pb(
        search,
        store_pb2.StoreSearchRequest,
        omit=PUBLIC_ONLY,
        vector_column=column,
        vector=np.ascontiguousarray(vector, dtype="<f4").tobytes(),
        query_vectors=len(vector) if np.ndim(vector) == 2 else 1,
        metric=metric_to_pb(search.metric),
        with_row_id=with_row_id,
        schema_fingerprint=fingerprint,
        projections=projections_to_pb(search.projections),
    )


def text_search_to_pb(
    search: Search, with_row_id: bool, fingerprint: str
) -> store_pb2.StoreTextSearchRequest:
    return store_request_to_pb(
        search,
        store_pb2.StoreTextSearchRequest,
        omit=(*PUBLIC_ONLY, *VECTOR_ONLY),
        query=search.query,
        search_columns=search.fts_columns,
        with_row_id=with_row_id,
        schema_fingerprint=fingerprint,
        projections=projections_to_pb(search.projections),
    )


def read_to_store_pb(read: Read) -> store_pb2.StoreScanRequest:
    return value_to_pb(
        read.params,
        store_pb2.StoreScanRequest,
        name=read.table,
        projections=projections_to_pb(read.params.projections),
    )


def explain_to_pb(verbose: bool, **query: Message) -> store_pb2.StoreExplainPlanRequest:
    """An ExplainPlan request for one query: ``search=``, ``text_search=`` or ``scan=``."""
    return store_pb2.StoreExplainPlanRequest(verbose=verbose, **query)


def rename_table_to_pb(name: str, new_name: str) -> store_pb2.StoreRenameTableRequest:
    return store_pb2.StoreRenameTableRequest(name=name, new_name=new_name)


def take_to_pb(take: Take) -> store_pb2.StoreTakeRequest:
    return value_to_pb(
        take.params,
        store_pb2.StoreTakeRequest,
        name=take.table,
        projections=projections_to_pb(take.params.projections),
    )


def scan_to_pb(scan: Scan) -> store_pb2.StoreScanRequest:
    return store_pb2.StoreScanRequest(name=scan.table, filter=scan.filter, columns=scan.columns)


def create_index_to_pb(index: CreateIndex) -> store_pb2.StoreCreateIndexRequest:
    return store_request_to_pb(
        index,
        store_pb2.StoreCreateIndexRequest,
        index_type=index_type_to_pb(index.index_type),
        params=index_params_to_pb(index.params),
    )
