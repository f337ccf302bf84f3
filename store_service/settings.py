"""Store settings: every field is a flag and a ``STORE_*`` environment variable."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from embedsearch.rpc.settings import ServiceSettings


class StoreSettings(ServiceSettings):
    """Settings of store_service."""

    model_config = SettingsConfigDict(env_prefix="STORE_")
    service_name: ClassVar[str] = "store"

    port: int = Field(50052, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(9452, ge=-1, le=65535, description="/metrics port; -1 is off.")
    data_root: str = Field(
        "./data", description="Directory or object-store URI (s3://bucket/prefix) of the tables."
    )
