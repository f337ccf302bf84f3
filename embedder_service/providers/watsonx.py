"""The ``watsonx`` provider: IBM watsonx.ai text embeddings, with the ibm-watsonx-ai client."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from pydantic import Field, PrivateAttr

from embedder_service.providers import BUILTIN
from embedder_service.providers.api import ApiEmbeddingFunction, provider_error
from embedder_service.providers.vendor import api_key, vendor_import
from embedsearch.contract.errors import InvalidArgument, Unauthenticated

DEFAULT_URL = "https://us-south.ml.cloud.ibm.com"
# LanceDB's table of model dimensions (current models and the deprecated ones).
MODEL_DIMS = {
    "ibm/granite-embedding-278m-multilingual": 768,
    "ibm/slate-125m-english-rtrvr-v2": 768,
    "ibm/slate-30m-english-rtrvr-v2": 384,
    "intfloat/multilingual-e5-large": 1024,
    "sentence-transformers/all-minilm-l6-v2": 384,
    "ibm/slate-125m-english-rtrvr": 768,
    "ibm/slate-30m-english-rtrvr": 384,
    "sentence-transformers/all-minilm-l12-v2": 384,
}


@BUILTIN.register("watsonx")
class WatsonxEmbeddings(ApiEmbeddingFunction):
    """Text embeddings from watsonx.ai (``/ml/v1/text/embeddings``) in a project or a space.

    The key is ``api_key`` or ``WATSONX_API_KEY``; the project ``project_id`` or
    ``WATSONX_PROJECT_ID``, or the space ``space_id`` or ``WATSONX_SPACE_ID``, as in LanceDB.
    ``url`` is an IBM Cloud region; another watsonx.ai-compatible endpoint also needs the
    ``auth_url`` that issues its IAM tokens. TLS is verified against the system's CAs
    (``SSL_CERT_FILE`` in the embedder's environment for a private CA).
    """

    default_model: ClassVar[str] = "ibm/slate-125m-english-rtrvr"
    provider_name: ClassVar[str] = "watsonx"
    # watsonx.ai's documented limit: 1000 inputs per embeddings request.
    max_inputs_per_request: ClassVar[int] = 1000
    max_tokens_per_request: ClassVar[int] = 10**9  # inputs are truncated one by one
    known_ndims: ClassVar[dict[str, int]] = MODEL_DIMS

    name: str = Field("ibm/slate-125m-english-rtrvr", description="Model id.")
    project_id: str | None = Field(None, description="watsonx.ai project id.")
    space_id: str | None = Field(None, description="watsonx.ai deployment space id.")
    url: str | None = Field(None, description=f"Service URL (default {DEFAULT_URL}).")
    auth_url: str | None = Field(None, description="IAM token endpoint, for a non-IBM url.")
    params: dict[str, Any] | None = Field(None, description="Embedding parameters.")
    batch_size: int = Field(1000, ge=1, le=1000, description="Most inputs in one request.")

    _client: Any = PrivateAttr(default=None)

    def client(self) -> Any:
        if self._client is None:
            ibm = vendor_import("ibm_watsonx_ai", "ibm-watsonx-ai", "watsonx", "watsonx")
            import httpx
            from ibm_watsonx_ai.foundation_models import Embeddings

            url = (self.url or self.base_url or DEFAULT_URL).rstrip("/")
            credentials = {"api_key": api_key("watsonx", self.secret(), "WATSONX_API_KEY")}
            if url not in ibm.APIClient.PLATFORM_URLS_MAP:
                if not self.auth_url:
                    raise InvalidArgument(
                        f"watsonx url {url} is not an IBM Cloud region; for another "
                        "watsonx.ai-compatible endpoint give auth_url, its IAM token endpoint"
                    )
                credentials.update(platform_url=url, auth_url=self.auth_url)
            where = self._where()
            try:
                # A plain httpx client: the library's own transport would retry 401 and 5xx
                # three more times under our retries.
                api = ibm.APIClient(
                    ibm.Credentials(url=url, **credentials),
                    httpx_client=httpx.Client(timeout=self.timeout),
                    **where,
                )
                self._client = Embeddings(
                    model_id=self.name,
                    api_client=api,
                    params=self.params,
                    max_retries=0,  # retries are ours
                    **where,
                )
            except Exception as exc:
                raise _error(exc) from exc
        return self._client

    def _where(self) -> dict[str, str]:
        project_id, space_id = self.project_id, self.space_id
        if project_id is None and space_id is None:
            project_id = os.environ.get("WATSONX_PROJECT_ID")
            space_id = os.environ.get("WATSONX_SPACE_ID")
        if project_id and space_id:
            raise InvalidArgument("watsonx: give project_id or space_id, not both")
        if not project_id and not space_id:
            raise InvalidArgument(
                "watsonx needs project_id or space_id (or WATSONX_PROJECT_ID / WATSONX_SPACE_ID "
                "in the embedder's environment)"
            )
        return {"project_id": project_id} if project_id else {"space_id": space_id}  # type: ignore[dict-item]

    def _request(self, texts: list[str], mode: str, timeout: float) -> list[list[float]]:
        client = self.client()
        try:
            return client.embed_documents(texts=texts, concurrency_limit=1)
        except Exception as exc:
            raise _error(exc) from exc


def _error(exc: Exception) -> Exception:
    """Our error for what the ibm-watsonx-ai client raised, by the HTTP status it carries."""
    import httpx
    from ibm_watsonx_ai.wml_client_error import WMLClientError

    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        return provider_error("watsonx", int(status), _message(exc, response))
    if isinstance(exc, httpx.TransportError):
        return provider_error("watsonx", None, str(exc))
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, Exception) and cause is not exc and isinstance(exc, WMLClientError):
        return _error(cause)
    if isinstance(exc, WMLClientError) and "token" in str(exc).lower():
        return Unauthenticated(f"watsonx: {exc}")
    return exc


def _message(exc: Exception, response: Any) -> str:
    try:
        body = response.json()
    except Exception:  # a body that is no JSON: the client's own words
        return str(exc)[:300]
    errors = body.get("errors") if isinstance(body, dict) else None
    if errors and isinstance(errors[0], dict):
        return str(errors[0].get("message", errors[0]))
    return str(body)[:300]
