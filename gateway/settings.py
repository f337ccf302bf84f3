"""Gateway settings: every field is a flag and a ``GATEWAY_*`` environment variable."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from gateway.media import MediaReader
from service_kit.paths import comma_list, real_dirs
from service_kit.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    """Settings of the gateway. The two peer addresses are required."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_")
    service_name: ClassVar[str] = "gateway"
    auth_hint: ClassVar[str] = "embedsearch.connect(uri, api_key=...)"

    port: int = Field(50050, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(9450, ge=-1, le=65535, description="/metrics port; -1 is off.")
    embedder_addr: str = Field(
        ..., min_length=1, description="embedder_service address, host:port or unix:/path."
    )
    store_addr: str = Field(
        ..., min_length=1, description="store_service address, host:port or unix:/path."
    )
    max_rows_per_request: int = Field(
        100_000, ge=1, description="Most rows one Add/MergeInsert message may carry."
    )
    peer_token: str = Field(
        "",
        description="Bearer token the gateway presents to the embedder and the store (their "
        "--auth-tokens); empty sends none.",
    )
    peer_token_file: str = Field(
        "",
        description="File whose first token the gateway presents to its peers; re-read when "
        "it changes, so a rotated Secret needs no restart.",
    )
    peer_tls_ca_file: str = Field(
        "",
        description="PEM CA that signed the embedder's and store's certificates; set, the "
        "gateway reaches them over TLS.",
    )
    peer_tls_cert_file: str = Field(
        "", description="PEM client certificate the gateway presents to its peers (mutual TLS)."
    )
    peer_tls_key_file: str = Field("", description="PEM private key of --peer-tls-cert-file.")

    media_roots: str = Field(
        "",
        description="Directories (comma-separated) under which a multimodal function's string "
        "column or query may name files (paths, file:// URIs), symlinks resolved; empty reads "
        "no local files.",
    )
    media_hosts: str = Field(
        "",
        description="Hosts (comma-separated; * for any) from which such a string may name "
        "http(s) URLs; empty fetches none.",
    )
    media_max_bytes: int = Field(
        16 << 20, ge=1, description="Largest media file or URL body read for one input."
    )
    media_timeout_s: float = Field(
        10.0, gt=0, description="Seconds to fetch one media URL, redirects included."
    )

    def media_reader(self) -> MediaReader:
        """The reader of media references, within --media-roots and --media-hosts."""
        return MediaReader(
            roots=tuple(real_dirs(self.media_roots)),
            hosts=frozenset(host.lower() for host in comma_list(self.media_hosts)),
            max_bytes=self.media_max_bytes,
            timeout_s=self.media_timeout_s,
        )

    @model_validator(mode="after")
    def _one_peer_token(self) -> GatewaySettings:
        if self.peer_token and self.peer_token_file:
            raise ValueError("give --peer-token or --peer-token-file, not both")
        return self
