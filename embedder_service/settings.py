"""Embedder settings: every field is a flag and an ``EMBEDDER_*`` environment variable."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from embedsearch.rpc.settings import ServiceSettings


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
