"""Embedder settings: every field is a flag and an ``EMBEDDER_*`` environment variable."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from embedder_service.backends import BackendSettings
from embedder_service.batcher import BatchLimits
from embedder_service.guards import RequestLimits
from service_kit.paths import comma_list, real_dirs
from service_kit.settings import ServiceSettings


# The batch and request limits and the backend are groups of their own, declared on their
# models: their fields are flags and variables like the rest (--max-batch-size,
# EMBEDDER_MAX_BATCH_SIZE, --backend), and the core takes them as those models (batch_limits,
# request_limits, inference_backend).
class EmbedderSettings(BatchLimits, RequestLimits, BackendSettings, ServiceSettings):
    """Settings of embedder_service."""

    model_config = SettingsConfigDict(env_prefix="EMBEDDER_")
    service_name: ClassVar[str] = "embedder"

    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(9451, ge=-1, le=65535, description="/metrics port; -1 is off.")
    http_port: int = Field(
        -1,
        ge=-1,
        le=65535,
        description="Port of the OpenAI-compatible HTTP API (/v1/embeddings, /v1/models, "
        "/v1/rerank) on --host; -1 is off, 0 picks a free one.",
    )
    http_model_aliases: str = Field(
        "",
        description="Model names the HTTP API answers to, as alias=model pairs "
        "(comma-separated), e.g. text-embedding-3-small=sentence-transformers/all-MiniLM-L6-v2.",
    )
    http_matryoshka_models: str = Field(
        "",
        description="Model names (comma-separated, as clients send them) whose vectors the HTTP "
        "API may cut to a shorter `dimensions`; any other model refuses a shorter length.",
    )
    http_max_body_bytes: int = Field(
        64 << 20, ge=1, description="Largest HTTP request body; a larger one answers 413."
    )
    preload: str = Field(
        "sentence-transformers",
        description="Providers whose default model is loaded before reporting SERVING "
        "(comma-separated; empty loads nothing up front).",
    )
    plugins: str = Field(
        "", description="Modules to import at start (comma-separated) that @register providers."
    )
    model_roots: str = Field(
        "",
        description="Directories (comma-separated) that local model paths given by callers "
        "(name, pretrained) must lie under, symlinks resolved; empty allows only the bundled "
        "model and hub names found in the server's model cache.",
    )
    tokenizer_workers: int = Field(2, ge=1, description="Threads tokenizing incoming requests.")
    function_cache_size: int = Field(
        1024,
        ge=1,
        description="Function specs kept validated, their secrets resolved (LRU); a spec "
        "seen again skips both.",
    )
    query_cache_size: int = Field(
        10_000, ge=0, description="Query embeddings kept in the LRU cache; 0 turns it off."
    )
    retry_base_s: float = Field(
        0.5, ge=0, description="First backoff of API retries; doubles each retry, capped at 30 s."
    )
    secrets_dir: str = Field(
        "", description="Directory of secret files that $var:name references read (k8s Secret)."
    )
    allowed_base_urls: str = Field(
        "",
        description="Endpoints (comma-separated URLs: scheme and host, optional port and path "
        "prefix; * for any) that may receive API keys the embedder holds when a function "
        "names a base_url; other endpoints work only with the caller's own api_key.",
    )

    @property
    def batch_limits(self) -> BatchLimits:
        """--max-batch-size and the other bounds of a batch, as the batcher takes them."""
        return self.group(BatchLimits)

    @property
    def request_limits(self) -> RequestLimits:
        """--max-text-bytes and the other bounds of a request, as the guards take them."""
        return self.group(RequestLimits)

    @property
    def inference_backend(self) -> BackendSettings:
        """--backend and --onnx-cache-dir, as the local text providers take them."""
        return self.group(BackendSettings)

    def plugin_modules(self) -> list[str]:
        return comma_list(self.plugins)

    def model_root_dirs(self) -> list[str]:
        """The --model-roots directories as real paths (symlinks resolved)."""
        return real_dirs(self.model_roots)

    def base_url_rules(self) -> tuple[str, ...]:
        return tuple(comma_list(self.allowed_base_urls))

    @field_validator("http_model_aliases")
    @classmethod
    def _aliases_are_pairs(cls, value: str) -> str:
        for entry in comma_list(value):
            alias, sep, model = entry.partition("=")
            if not (sep and alias.strip() and model.strip()):
                raise ValueError(f"{entry!r} is no alias=model pair")
        return value

    def http_aliases(self) -> dict[str, str]:
        """--http-model-aliases as {alias: model}."""
        pairs = (entry.partition("=") for entry in comma_list(self.http_model_aliases))
        return {alias.strip(): model.strip() for alias, _, model in pairs}

    def preloaded(self) -> list[str]:
        return comma_list(self.preload)
