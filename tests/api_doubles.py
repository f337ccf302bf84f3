"""Local HTTP servers that speak OpenAI's and Cohere's embeddings wire formats, for tests.

Each answers with deterministic vectors (seeded by the text) and can be told to fail: a script
of status codes is consumed one per request before normal service resumes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np


def fake_vector(text: str, ndims: int, salt: str = "") -> list[float]:
    seed = int.from_bytes(hashlib.sha256((salt + text).encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).normal(size=ndims).astype("<f4")
    return (vector / np.linalg.norm(vector)).tolist()


class ApiDouble:
    """A threaded HTTP server on 127.0.0.1; ``requests`` records every JSON body received, and
    ``headers`` the headers of each. ``latency_s`` delays every answer."""

    def __init__(self, ndims: int = 8) -> None:
        self.ndims = ndims
        self.failures: deque[int] = deque()
        self.latency_s = 0.0
        self.requests: list[dict[str, Any]] = []
        self.auth_headers: list[str] = []
        self.headers: list[dict[str, str]] = []
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                double.requests.append(body)
                double.auth_headers.append(self.headers.get("Authorization", ""))
                double.headers.append({k.lower(): v for k, v in self.headers.items()})
                if double.latency_s:
                    time.sleep(double.latency_s)
                status = double.failures.popleft() if double.failures else 200
                if status != 200:
                    reply = {
                        "error": {"message": f"injected {status}", "type": "test"},
                        "message": f"injected {status}",
                    }
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
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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
    """POST /v2/embed with embedding_types ["float"]; vectors depend on input_type."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert path == "/v2/embed", path
        vectors = [fake_vector(t, self.ndims, body["input_type"]) for t in body["texts"]]
        return {
            "id": "test",
            "embeddings": {"float": vectors},
            "texts": body["texts"],
            "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 1}},
            "response_type": "embeddings_by_type",
        }
