"""The ``bedrock-text`` provider: Titan and Cohere embedding models on Amazon Bedrock (boto3)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar

from pydantic import Field, PrivateAttr

from embedder_service.providers import BUILTIN
from embedder_service.providers.api import ApiEmbeddingFunction, provider_error
from embedder_service.providers.vendor import vendor_import
from embedsearch.contract.errors import Unauthenticated


@BUILTIN.register("bedrock-text")
class BedrockTextEmbeddings(ApiEmbeddingFunction):
    """Text embeddings from Bedrock's InvokeModel, with the request bodies LanceDB sends.

    Credentials are AWS's usual chain in the embedder (environment, ``profile_name``, an
    instance or pod role), optionally exchanged for ``assumed_role``; there is no api_key.
    Titan models take one text per call; Cohere models up to 96, with the input type of the
    mode (``source_input_type`` / ``query_input_type``).
    """

    default_model: ClassVar[str] = "amazon.titan-embed-text-v1"
    provider_name: ClassVar[str] = "bedrock-text"
    # Cohere on Bedrock: 96 texts per request, 512 tokens each. Titan: one text per request.
    max_inputs_per_request: ClassVar[int] = 96
    max_tokens_per_request: ClassVar[int] = 96 * 512
    known_ndims: ClassVar[dict[str, int]] = {
        "amazon.titan-embed-text-v1": 1536,
        "amazon.titan-embed-text-v2:0": 1024,
        "cohere.embed-english-v3": 1024,
        "cohere.embed-multilingual-v3": 1024,
    }

    name: str = Field("amazon.titan-embed-text-v1", description="Bedrock model id.")
    region: str = Field("us-east-1", description="AWS region.")
    assumed_role: str | None = Field(None, description="ARN of a role to assume.")
    profile_name: str | None = Field(None, description="AWS profile of the embedder's config.")
    role_session_name: str = Field("lancedb-embeddings", description="Session name.")
    source_input_type: str = Field("search_document", description="Cohere input type, documents.")
    query_input_type: str = Field("search_query", description="Cohere input type, queries.")
    endpoint_url: str | None = Field(None, description="Bedrock runtime endpoint (or base_url).")
    # No key: a caller's literal api_key must not open other endpoints to the embedder's
    # AWS credentials (guards.check_endpoint lets a caller's own key go anywhere).
    api_key: None = Field(None, description="Unused: Bedrock signs with AWS credentials.")
    batch_size: int = Field(96, ge=1, le=96, description="Most inputs in one Cohere request.")

    _client: Any = PrivateAttr(default=None)

    def _cohere(self) -> bool:
        return self.name.split(".")[0] == "cohere"

    def _chunks(self, texts: list[str]) -> Iterator[list[str]]:
        if self._cohere():
            yield from super()._chunks(texts)
        else:
            yield from ([text] for text in texts)

    def client(self) -> Any:
        if self._client is None:
            boto3 = vendor_import("boto3", "boto3", "bedrock-text")
            from botocore.config import Config

            session = (
                boto3.Session(profile_name=self.profile_name, region_name=self.region)
                if self.profile_name
                else boto3.Session()
            )
            kwargs: dict[str, Any] = {"region_name": self.region}
            if self.assumed_role:
                reply = session.client("sts").assume_role(
                    RoleArn=self.assumed_role, RoleSessionName=self.role_session_name
                )
                credentials = reply["Credentials"]
                kwargs.update(
                    aws_access_key_id=credentials["AccessKeyId"],
                    aws_secret_access_key=credentials["SecretAccessKey"],
                    aws_session_token=credentials["SessionToken"],
                )
            config = Config(
                region_name=self.region,
                retries={"total_max_attempts": 1},  # retries are ours
                connect_timeout=self.timeout,
                read_timeout=self.timeout,
            )
            self._client = session.client(
                "bedrock-runtime",
                config=config,
                endpoint_url=self.endpoint_url or self.base_url,
                **kwargs,
            )
        return self._client

    def _request(self, texts: list[str], mode: str, timeout: float) -> list[list[float]]:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        if self._cohere():
            input_type = self.query_input_type if mode == "query" else self.source_input_type
            body: dict[str, Any] = {"input_type": input_type, "texts": texts}
        else:
            body = {"inputText": texts[0]}
        try:
            reply = self.client().invoke_model(
                body=json.dumps(body),
                modelId=self.name,
                accept="application/json",
                contentType="application/json",
            )
            answer = json.loads(reply["body"].read())
        except NoCredentialsError as exc:
            raise Unauthenticated(
                f"bedrock-text: the embedder has no AWS credentials ({exc}); give it some "
                "(environment, profile_name, or a role) with bedrock:InvokeModel"
            ) from exc
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = exc.response.get("Error", {}).get("Message") or str(exc)
            raise provider_error("bedrock-text", status, message) from exc
        except BotoCoreError as exc:
            raise provider_error("bedrock-text", None, str(exc)) from exc
        return answer["embeddings"] if self._cohere() else [answer["embedding"]]
