"""The embedder's OpenAI-compatible HTTP face: ``POST /v1/embeddings``, ``GET /v1/models`` and
``POST /v1/rerank``, for clients that speak the API every embedding server speaks (the
``openai`` client, LangChain, LlamaIndex, LanceDB's own ``openai`` function).

A thin adapter, as the gRPC servicer is: each request goes through the same
:class:`EmbedderCore` (its batcher, query cache and request limits), the same bearer tokens
and the same request metrics (``method`` labelled ``POST /v1/embeddings``). Errors are the
core's typed errors, answered in OpenAI's error shape with the HTTP status their gRPC status
maps to (:data:`HTTP_STATUS`).

Model names (``model``) address registry functions, see :func:`function_of`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from embedder_service.core import EmbedderCore
from embedder_service.rerank import RerankCore
from embedsearch.contract.errors import (
    EmbedsearchError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    status_code_name,
)
from embedsearch.contract.text import brief
from service_kit.server import Outcome, RpcMetrics

# HTTP status of each gRPC status code (google.rpc.Code's own HTTP mapping).
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
DEFAULT_PROVIDER = "sentence-transformers"
RERANK_PROVIDER = "cross-encoder"
EMBED_METHOD = "/embedsearch.v1.Embedder/Embed"  # whose token rules the HTTP face follows
RERANK_METHOD = "/embedsearch.v1.Embedder/Rerank"


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request. Token-id inputs are refused: send text."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str] | list[int] | list[list[int]]
    model: str = Field(min_length=1, max_length=300)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None
    # Cohere's, Voyage's and infinity's extension: a query is embedded as one (the model's
    # query prompt, and the embedder's query cache); anything else as a document.
    input_type: str | None = Field(None, max_length=40)


class RerankRequest(BaseModel):
    """The rerank request Cohere, infinity and TEI's clients share (``texts`` is TEI's name
    for ``documents``)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(RERANK_PROVIDER, min_length=1, max_length=300)
    query: str
    documents: list[str] | None = None
    texts: list[str] | None = None
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = False


@dataclass
class HttpFace:
    """What the HTTP face needs of the embedder: its cores, its token check, its metrics."""

    core: EmbedderCore
    reranker: RerankCore
    guard: Callable[[str, Sequence[tuple[str, Any]]], None] | None
    metrics: RpcMetrics
    aliases: dict[str, str] = field(default_factory=dict)  # --http-model-aliases
    matryoshka: frozenset[str] = frozenset()  # --http-matryoshka-models
    max_body_bytes: int = 64 << 20

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(
                    "/v1/embeddings",
                    self._handler("POST /v1/embeddings", self.embeddings),
                    methods=["POST"],
                ),
                Route("/v1/models", self._handler("GET /v1/models", self.models), methods=["GET"]),
                Route(
                    "/v1/rerank", self._handler("POST /v1/rerank", self.rerank), methods=["POST"]
                ),
            ]
        )

    def _handler(
        self, method: str, handle: Callable[[Request], Awaitable[dict[str, Any]]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """``handle`` answering in JSON, its errors in OpenAI's shape, each request recorded in
        the service's request metrics as a gRPC call is (``method`` its label)."""

        async def endpoint(request: Request) -> Response:
            out = Outcome(self.metrics, method)
            try:
                answer: Response = JSONResponse(await handle(request))
            except EmbedsearchError as exc:
                out.close(status_code_name(exc))
                return error_response(exc)
            except HttpError as exc:
                out.close(exc.code)
                return exc.response()
            except BaseException:
                out.close("INTERNAL")
                raise
            out.close()
            return answer

        return endpoint

    def _authorize(self, request: Request, method: str) -> None:
        if self.guard is not None:
            self.guard(method, [("authorization", request.headers.get("authorization", ""))])

    async def _body(self, request: Request, model: type[BaseModel]) -> Any:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise HttpError(413, "RESOURCE_EXHAUSTED", self._too_large())
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_body_bytes:
                raise HttpError(413, "RESOURCE_EXHAUSTED", self._too_large())
        try:
            return model.model_validate_json(bytes(body))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            raise InvalidArgument(f"{where}: {first['msg']}") from None

    def _too_large(self) -> str:
        return f"the request body is over {self.max_body_bytes} bytes (--http-max-body-bytes)"

    async def embeddings(self, request: Request) -> dict[str, Any]:
        self._authorize(request, EMBED_METHOD)
        body: EmbeddingsRequest = await self._body(request, EmbeddingsRequest)
        texts = _texts(body.input)
        provider, args = self.function_of(body.model)
        try:
            loaded = await self.core.resolve(provider, args)
        except FailedPrecondition as exc:
            raise NotFound(f"model {brief(body.model)} cannot be served: {exc}") from None
        if "text" not in loaded.modalities:
            raise InvalidArgument(f"model {brief(body.model)} does not embed text")
        mode = "query" if body.input_type in ("query", "search_query") else "source"
        _, vectors = await self.core.embed(provider, args, mode, texts)
        if loaded.multi_vector:
            raise InvalidArgument(
                f"model {brief(body.model)} gives several vectors per input, which this API "
                "cannot return: use the gRPC Embed call"
            )
        matrix = self._dimensions(body, np.asarray(vectors, dtype=np.float32))
        tokens = await self.core.count_tokens(loaded, mode, texts)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encoded(row, body)}
                for i, row in enumerate(matrix)
            ],
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _dimensions(self, body: EmbeddingsRequest, vectors: np.ndarray) -> np.ndarray:
        """The vectors at ``dimensions``: as they are when it is their length, cut short and
        re-normalized for a Matryoshka model, refused for any other."""
        native = vectors.shape[1]
        if body.dimensions is None or body.dimensions == native:
            return vectors
        if body.model not in self.matryoshka:
            raise InvalidArgument(
                f"model {brief(body.model)} gives {native} dimensions and is no Matryoshka "
                "model, so dimensions must be omitted or equal it (an operator lists "
                "truncatable models in --http-matryoshka-models)"
            )
        if body.dimensions > native:
            raise InvalidArgument(
                f"dimensions={body.dimensions} is more than model {brief(body.model)}'s {native}"
            )
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        cut = vectors[:, : body.dimensions]
        if np.allclose(norms, 1.0, atol=1e-3):  # a normalizing model: so is its cut
            cut = cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)
        return cut

    async def models(self, request: Request) -> dict[str, Any]:
        self._authorize(request, EMBED_METHOD)
        loaded = {
            f"{fn.provider}:{fn.canonical_args.get('name', '')}".rstrip(":")
            for fn in self.core.loaded_functions()
        }
        names = [*self.aliases, *sorted(loaded), *sorted(self.core.registry.names())]
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "embedsearch"}
                for name in dict.fromkeys(names)
            ],
        }

    async def rerank(self, request: Request) -> dict[str, Any]:
        self._authorize(request, RERANK_METHOD)
        body: RerankRequest = await self._body(request, RerankRequest)
        if (body.documents is None) == (body.texts is None):
            raise InvalidArgument("send the documents to rank in documents (or texts)")
        documents = body.documents if body.documents is not None else body.texts or []
        kind, rest = self.aliases.get(body.model, body.model).partition(":")[::2]
        args = {"model_name": rest} if rest else {}
        scores = await self.reranker.rerank(kind, args, body.query, documents)
        order = np.argsort(-scores, kind="stable")[: body.top_n or len(documents)]
        results = []
        for i in order:
            result: dict[str, Any] = {"index": int(i), "relevance_score": float(scores[i])}
            if body.return_documents:
                result["document"] = {"text": documents[i]}
            results.append(result)
        return {"model": body.model, "results": results}

    def function_of(self, model: str) -> tuple[str, dict[str, Any]]:
        """The registry function a model name addresses, after ``--http-model-aliases``:

        - ``"<provider>:<model>"``: that provider with ``name=<model>`` (``"openai:text-
          embedding-3-small"``, ``"huggingface:BAAI/bge-small-en-v1.5"``);
        - ``"<provider>"``: that provider's default model;
        - any other name is a sentence-transformers model (``"sentence-transformers/all-
          MiniLM-L6-v2"``, ``"all-MiniLM-L6-v2"``), as TEI and infinity read it.
        """
        model = self.aliases.get(model, model)
        names = self.core.registry.names()
        provider, sep, name = model.partition(":")
        if sep and provider in names:
            return provider, ({"name": name} if name else {})
        if model in names:
            return model, {}
        return DEFAULT_PROVIDER, {"name": model}


class _Server(uvicorn.Server):
    """uvicorn's server, leaving SIGINT and SIGTERM to the service, which drains gRPC first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class HttpServer:
    """A running HTTP face: its bound port, and a way to stop it."""

    port: int
    server: uvicorn.Server
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


async def start_http(face: HttpFace, host: str, port: int) -> HttpServer:
    """Serve ``face`` on ``host:port`` (0: a free port) from the running event loop, the one
    the batcher runs on; bound before this returns, so the port is known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    # and without it every response waits out the client's delayed ACK (40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    config = uvicorn.Config(face.app(), lifespan="off", log_level="warning", access_log=False)
    server = _Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    return HttpServer(sock.getsockname()[1], server, task)


class HttpError(Exception):
    """A refusal made by the HTTP layer itself (a body too large), not by the core."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self) -> Response:
        return _error_json(self.status, self.message, None)


def error_response(exc: EmbedsearchError) -> Response:
    """A core error in OpenAI's shape, with its HTTP status and, when the core gave one, a
    ``retry-after`` in whole seconds."""
    status = HTTP_STATUS.get(status_code_name(exc), 500)
    retry = exc.retry_after_s
    headers = {"retry-after": str(max(1, round(retry)))} if retry is not None else None
    return _error_json(status, str(exc), getattr(exc, "reason", None), headers)


def _error_json(
    status: int, message: str, code: str | None, headers: dict[str, str] | None = None
) -> Response:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return Response(json.dumps(body), status, headers, media_type="application/json")


def _texts(value: str | list[str] | list[int] | list[list[int]]) -> list[str]:
    if isinstance(value, str):
        return [value]
    if value and not all(isinstance(item, str) for item in value):
        raise InvalidArgument("input holds token ids: send the text itself")
    if not value:
        raise InvalidArgument("input is empty: send a string or a list of strings")
    return list(value)  # type: ignore[arg-type]


def _encoded(row: np.ndarray, body: EmbeddingsRequest) -> list[float] | str:
    if body.encoding_format == "base64":  # little-endian float32, as OpenAI sends it
        return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    return row.tolist()
