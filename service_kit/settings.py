"""Settings shared by every service: read once at start-up from flags and environment variables."""

from __future__ import annotations

from typing import ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

S = TypeVar("S", bound="ServiceSettings")
G = TypeVar("G", bound=BaseModel)


MMAP_THRESHOLD_HELP = (
    "Fix glibc's mmap threshold: blocks this large are unmapped when freed, so memory stays "
    "flat under churn, at a page fault per page; 0 keeps glibc's own."
)


class TracingSettings(BaseModel):
    """Where a service sends its traces (service_kit/tracing.py); a group of ServiceSettings."""

    model_config = ConfigDict(extra="forbid")

    otlp_endpoint: str = Field(
        "",
        description="OTLP/gRPC collector that receives the service's traces, e.g. "
        "http://otel-collector:4317 (http:// plaintext, https:// TLS); empty: tracing off.",
    )
    trace_sample_ratio: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Fraction of the traces started here that are recorded; a caller's "
        "traceparent decides for the traces it starts.",
    )


class ServiceSettings(TracingSettings, BaseSettings):
    """Listening address, metrics endpoint, limits, callers' tokens and logging of one service.

    Every field is a flag (``--metrics-port``) and an environment variable with the service's
    prefix (``EMBEDDER_METRICS_PORT``). Flags win over the environment.

    A service's settings may inherit groups of fields (a plain pydantic model such as the
    embedder's ``BatchLimits``): their fields are flags and variables like the rest, with the
    same flat names, declared once on the group; :meth:`group` hands the group on as a model.
    """

    model_config = SettingsConfigDict(extra="forbid", cli_kebab_case=True, cli_prog_name=None)

    service_name: ClassVar[str] = ""
    # Where a caller refused for want of a token learns how to send one.
    auth_hint: ClassVar[str] = "the gateway sends it with --peer-token or --peer-token-file"

    host: str = Field("0.0.0.0", description="Interface to listen on.")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    socket: str = Field(
        "", description="Listen on this Unix socket instead of host:port (in-process stacks)."
    )
    metrics_port: int = Field(
        -1, ge=-1, le=65535, description="Prometheus /metrics HTTP port; -1 turns it off."
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Interface /metrics listens on: loopback by default; 0.0.0.0 in a pod, "
        "for a scraper on another host.",
    )
    max_message_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest gRPC message accepted or sent."
    )
    grace_period_s: float = Field(10.0, ge=0, description="Time in-flight calls get on SIGTERM.")
    tls_cert_file: str = Field(
        "", description="PEM certificate chain to serve TLS with; empty serves plaintext."
    )
    tls_key_file: str = Field("", description="PEM private key of --tls-cert-file.")
    tls_client_ca_file: str = Field(
        "", description="PEM CA bundle; when set, clients must present a certificate it signed."
    )
    auth_tokens: str = Field(
        "",
        description="Comma-separated bearer tokens; 'token:ro' may only call read-only RPCs. "
        "Empty and no --auth-tokens-file leaves the service open.",
    )
    auth_tokens_file: str = Field(
        "",
        description="File of bearer tokens, one per line ('token' or 'token:ro'); re-read "
        "when it changes.",
    )
    log_level: str = Field("INFO", description="Python logging level.")
    malloc_mmap_threshold_bytes: int = Field(
        0,
        ge=0,
        description=MMAP_THRESHOLD_HELP,
    )

    @model_validator(mode="after")
    def _tls_files_come_together(self) -> ServiceSettings:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("TLS needs both --tls-cert-file and --tls-key-file")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("--tls-client-ca-file (mutual TLS) needs --tls-cert-file too")
        return self

    _groups: dict[type[BaseModel], BaseModel] = PrivateAttr(default_factory=dict)

    def group(self, model: type[G]) -> G:
        """The fields of ``model``, a group these settings inherit, as a ``model`` of their own:
        what a core takes instead of the whole settings. Built once per settings object.

        >>> settings.group(BatchLimits).max_batch_size  # doctest: +SKIP
        64
        """
        if not isinstance(self, model):
            raise TypeError(f"{type(self).__name__} has no group {model.__name__}")
        built = self._groups.get(model)
        if built is None:
            fields = {name: getattr(self, name) for name in model.model_fields}
            built = self._groups[model] = model.model_validate(fields)
        return built  # type: ignore[return-value]

    @property
    def address(self) -> str:
        """The address gRPC binds: a Unix socket if given, else host:port."""
        return f"unix:{self.socket}" if self.socket else f"{self.host}:{self.port}"

    @classmethod
    def from_cli(cls: type[S], argv: list[str] | None = None) -> S:
        """Build settings from command-line flags over environment variables over defaults."""
        return cls(_cli_parse_args=argv if argv is not None else True)  # type: ignore[call-arg]

    @classmethod
    def explain(cls, exc: ValidationError) -> str:
        """One line per bad setting, naming both its flag and its environment variable."""
        prefix = cls.model_config.get("env_prefix", "")
        problems = []
        for error in exc.errors():
            message = str(error["msg"]).removeprefix("Value error, ")
            if not error["loc"]:  # a rule across fields names its flags itself
                problems.append(message)
                continue
            name = str(error["loc"][0])
            flag, env = "--" + name.replace("_", "-"), f"{prefix}{name}".upper()
            problems.append(f"{flag} (or {env}): {message}")
        return "invalid settings: " + "; ".join(problems)
