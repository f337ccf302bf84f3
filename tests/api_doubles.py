"""Local HTTP servers that speak embedding APIs' wire formats, for tests: OpenAI, Cohere,
Ollama, Gemini, Jina, Voyage AI, Bedrock and watsonx.ai.

Each answers with deterministic vectors (seeded by the text) and can be told to fail: a script
of status codes is consumed one per embedding request before normal service resumes.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np


def fake_vector(text: str, ndims: int, salt: str = "") -> list[float]:
    seed = int.from_bytes(hashlib.sha256((salt + text).encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).normal(size=ndims).astype("<f4")
    return (vector / np.linalg.norm(vector)).tolist()


def rerank_score(query: str, document: str) -> float:
    """A relevance in (0, 1): the share of the query's words in the document, and a small
    deterministic part from the pair's hash so that ties are rare."""
    words = set(query.lower().split())
    shared = len(words & set(document.lower().split())) / max(1, len(words))
    seed = hashlib.sha256(f"{query}\x00{document}".encode()).digest()[0]
    return round(0.9 * shared + 0.0999 * seed / 255 + 0.0001, 6)


class ApiDouble:
    """A threaded HTTP server on 127.0.0.1; ``requests`` records every JSON body received, and
    ``headers`` the headers of each, and ``paths`` their paths. ``latency_s`` delays every
    answer. With ``tls``, it speaks HTTPS with a certificate made for it (``ca_file``).

    Requests for which :meth:`scripted` is false (a token or a lookup, not an embedding call)
    are answered without being recorded or failed; ``other_requests`` lists their paths.
    """

    def __init__(self, ndims: int = 8, tls: bool = False) -> None:
        self.ndims = ndims
        self.failures: deque[int] = deque()
        self.latency_s = 0.0
        self.requests: list[dict[str, Any]] = []
        self.auth_headers: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.other_requests: list[str] = []
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._serve({})

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Type", "").startswith("application/x-www-form"):
                    form = urllib.parse.parse_qs(raw.decode())
                    self._serve({key: values[0] for key, values in form.items()})
                else:
                    self._serve(json.loads(raw))

            def _serve(self, body: dict[str, Any]) -> None:
                status = 200
                if double.scripted(self.command, self.path):
                    double.requests.append(body)
                    double.paths.append(self.path)
                    double.auth_headers.append(self.headers.get("Authorization", ""))
                    double.headers.append({k.lower(): v for k, v in self.headers.items()})
                    if double.latency_s:
                        time.sleep(double.latency_s)
                    status = double.failures.popleft() if double.failures else 200
                else:
                    double.other_requests.append(self.path)
                if status != 200:
                    reply = double.error_body(status)
                else:
                    reply = double.answer(self.path, body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.scheme = "http"
        self.ca_file = ""
        if tls:
            self._dir = tempfile.TemporaryDirectory()
            cert, key = self_signed(Path(self._dir.name))
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme, self.ca_file = "https", str(cert)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def scripted(self, method: str, path: str) -> bool:
        """Whether a request is an embedding call: recorded, and failed as scripted."""
        return True

    def error_body(self, status: int) -> Any:
        return {
            "error": {"message": f"injected {status}", "type": "test"},
            "message": f"injected {status}",
        }

    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, written under ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class OpenAIDouble(ApiDouble):
    """POST /v1/embeddings, float or base64 encoding, as the openai client asks."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert path == "/v1/embeddings", path
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        ndims = body.get("dimensions") or self.ndims
        data = []
        for index, text in enumerate(texts):
            vector = fake_vector(text, ndims)
            if body.get("encoding_format") == "base64":
                vector = base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        tokens = sum(len(t.split()) for t in texts)
        return {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


class CohereDouble(ApiDouble):
    """POST /v2/embed with embedding_types ["float"]; vectors depend on input_type. POST
    /v1/rerank and /v2/rerank: results best first (top_n of them), scored by
    :func:`rerank_score`."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path in ("/v1/rerank", "/v2/rerank"):
            documents = [d if isinstance(d, str) else d["text"] for d in body["documents"]]
            scores = [rerank_score(body["query"], d) for d in documents]
            order = sorted(range(len(scores)), key=lambda i: -scores[i])
            results = [{"index": i, "relevance_score": scores[i]} for i in order]
            return {
                "id": "test",
                "results": results[: body.get("top_n") or None],
                "meta": {"api_version": {"version": path[2]}, "billed_units": {"search_units": 1}},
            }
        assert path == "/v2/embed", path
        vectors = [fake_vector(t, self.ndims, body["input_type"]) for t in body["texts"]]
        return {
            "id": "test",
            "embeddings": {"float": vectors},
            "texts": body["texts"],
            "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 1}},
            "response_type": "embeddings_by_type",
        }


class OllamaDouble(ApiDouble):
    """POST /api/embed, as an Ollama server answers it."""

    def error_body(self, status: int) -> Any:
        return {"error": f"injected {status}"}

    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert path == "/api/embed", path
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return {
            "model": body["model"],
            "embeddings": [fake_vector(text, self.ndims) for text in texts],
            "total_duration": 1000,
            "load_duration": 10,
            "prompt_eval_count": len(texts),
        }


class GeminiDouble(ApiDouble):
    """POST /{version}/models/{model}:batchEmbedContents; a vector is seeded by its parts'
    texts joined with spaces, salted with the task type."""

    def error_body(self, status: int) -> Any:
        return {"error": {"code": status, "message": f"injected {status}", "status": "TEST"}}

    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert path.endswith(":batchEmbedContents"), path
        embeddings = []
        for request in body["requests"]:
            text = " ".join(part["text"] for part in request["content"]["parts"])
            ndims = request.get("outputDimensionality") or self.ndims
            embeddings.append({"values": fake_vector(text, ndims, request.get("taskType", ""))})
        return {"embeddings": embeddings}


class JinaDouble(ApiDouble):
    """POST /v1/embeddings, as Jina AI answers it; vectors are salted with the task."""

    def error_body(self, status: int) -> Any:
        return {"detail": f"injected {status}"}

    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert path == "/v1/embeddings", path
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": fake_vector(t, self.ndims, body.get("task", "")),
            }
            for i, t in enumerate(body["input"])
        ]
        tokens = sum(len(t.split()) for t in body["input"])
        return {
            "model": body["model"],
            "object": "list",
            "usage": {"total_tokens": tokens, "prompt_tokens": tokens},
            "data": data,
        }


class VoyageDouble(ApiDouble):
    """POST /v1/embeddings, as Voyage AI answers it (base64 when asked); vectors are salted
    with the input type."""

    def error_body(self, status: int) -> Any:
        return {"detail": f"injected {status}"}

    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert path == "/v1/embeddings", path
        ndims = body.get("output_dimension") or self.ndims
        data = []
        for index, text in enumerate(body["input"]):
            vector: Any = fake_vector(text, ndims, body.get("input_type") or "")
            if body.get("encoding_format") == "base64":
                vector = base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode()
            data.append({"object": "embedding", "embedding": vector, "index": index})
        tokens = sum(len(t.split()) for t in body["input"])
        return {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"total_tokens": tokens},
        }


class BedrockDouble(ApiDouble):
    """POST /model/{modelId}/invoke, as Bedrock's runtime answers Titan (one inputText) and
    Cohere (texts, salted with the input type) embedding models."""

    def error_body(self, status: int) -> Any:
        return {"message": f"injected {status}"}

    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert path.startswith("/model/") and path.endswith("/invoke"), path
        if "texts" in body:
            vectors = [fake_vector(t, self.ndims, body["input_type"]) for t in body["texts"]]
            return {
                "embeddings": vectors,
                "id": "test",
                "response_type": "embeddings_floats",
                "texts": body["texts"],
            }
        text = body["inputText"]
        return {
            "embedding": fake_vector(text, self.ndims),
            "inputTextTokenCount": len(text.split()),
        }


class WatsonxDouble(ApiDouble):
    """watsonx.ai over HTTPS: IAM tokens at /identity/token (for the api key ``api_key``),
    project lookups at /v2/projects/{id}, and POST /ml/v1/text/embeddings."""

    def __init__(self, ndims: int = 8, api_key: str = "wx-key") -> None:
        self.api_key = api_key
        self.token = ""
        super().__init__(ndims, tls=True)

    def scripted(self, method: str, path: str) -> bool:
        return path.startswith("/ml/v1/text/embeddings")

    def error_body(self, status: int) -> Any:
        return {
            "errors": [{"code": "test", "message": f"injected {status}"}],
            "status_code": status,
        }

    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path == "/identity/token":
            assert body["apikey"] == self.api_key, "the IAM endpoint got another key"
            now = int(time.time())
            self.token = ".".join(
                [_b64({"alg": "none"}), _b64({"exp": now + 3600, "iat": now}), "sig"]
            )
            return {
                "access_token": self.token,
                "refresh_token": "r",
                "token_type": "Bearer",
                "expires_in": 3600,
                "expiration": now + 3600,
            }
        if path.startswith("/v2/projects/"):
            return {
                "metadata": {"guid": path.rsplit("/", 1)[1]},
                "entity": {
                    "storage": {"type": "bmcos_object_storage"},
                    "compute": [{"type": "machine_learning", "guid": "wml", "name": "wml"}],
                },
            }
        assert path.startswith("/ml/v1/text/embeddings"), path
        return {
            "model_id": body["model_id"],
            "results": [{"embedding": fake_vector(t, self.ndims)} for t in body["inputs"]],
            "created_at": "2024-01-01T00:00:00.000Z",
            "input_token_count": sum(len(t.split()) for t in body["inputs"]),
        }


def _b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")
