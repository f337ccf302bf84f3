"""Embedder settings: every field is a flag and an ``EMBEDDER_*`` environment variable."""

from __future__ import annotations

import os
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from service_kit.settings import ServiceSettings


class EmbedderSettings(ServiceSettings):
    """Settings of embedder_service."""

    model_config = SettingsConfigDict(env_prefix="EMBEDDER_")
    service_name: ClassVar[str] = "embedder"

    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(9451, ge=-1, le=65535, description="/metrics port; -1 is off.")
    preload: str = Field(
        "sentence-transformers",
        description="Providers whose default model is loaded before reporting SERVING "
        "(comma-separated; empty loads nothing up front).",
    )
    plugins: str = Field(
        "", description="Modules to import at start (comma-separated) that @register providers."
    )
    max_batch_size: int = Field(
        64, ge=1, description="Most inputs per batch (a provider's batch_size may lower it)."
    )
    max_batch_tokens: int = Field(
        16384, ge=1, description="Most padded tokens per batch (longest input x batch size)."
    )
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        description="How long an idle model waits for a fuller batch (0: never; under load "
        "batches fill while the model is busy).",
    )
    padding_slack: float = Field(
        0.3,
        ge=0,
        description="Padded tokens may exceed real ones by this fraction (GPU: raise it).",
    )
    max_queued_inputs: int = Field(
        4096, ge=1, description="Inputs waiting per function before RESOURCE_EXHAUSTED."
    )
    max_text_bytes: int = Field(
        1 << 20, ge=1, description="Longest text accepted as one input, in UTF-8 bytes."
    )
    max_blob_bytes: int = Field(
        16 << 20, ge=1, description="Largest binary input (an image, ...) accepted, in bytes."
    )
    max_inputs_per_request: int = Field(
        2048, ge=1, description="Most inputs (texts or blobs) in one Embed request."
    )
    max_function_args: int = Field(
        64, ge=1, description="Most create() arguments in one function spec."
    )
    max_function_args_bytes: int = Field(
        64 << 10, ge=2, description="Largest function spec arguments, in bytes of JSON."
    )
    max_function_args_depth: int = Field(
        8, ge=0, description="Deepest nesting of lists and objects in one argument value."
    )
    model_roots: str = Field(
        "",
        description="Directories (comma-separated) that local model paths given by callers "
        "(name, pretrained) must lie under, symlinks resolved; empty allows only the bundled "
        "model and hub names found in the server's model cache.",
    )
    tokenizer_workers: int = Field(2, ge=1, description="Threads tokenizing incoming requests.")
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

    def plugin_modules(self) -> list[str]:
        return [name.strip() for name in self.plugins.split(",") if name.strip()]

    def model_root_dirs(self) -> list[str]:
        """The --model-roots directories as real paths (symlinks resolved)."""
        roots = (root.strip() for root in self.model_roots.split(","))
        return [os.path.realpath(os.path.expanduser(root)) for root in roots if root]

    def base_url_rules(self) -> tuple[str, ...]:
        return tuple(url.strip() for url in self.allowed_base_urls.split(",") if url.strip())

    def preloaded(self) -> list[str]:
        return [name.strip() for name in self.preload.split(",") if name.strip()]
