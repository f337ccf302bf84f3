"""The ``colbert`` provider: one vector per token (late interaction), from a local directory."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from embedder_service.providers import BUILTIN
from embedder_service.providers.huggingface import HuggingFaceEmbeddings
from embedder_service.providers.local import TokenPipeline


class TokenVectors(TokenPipeline):
    """The tokenize/forward pipeline of a multi-vector model: each input's vectors are the
    last hidden states of its tokens, padding left out."""

    def use_graphs(self, max_batch: int, capture: bool = True) -> None:
        """Eager always: the outputs' shapes follow each input's tokens."""

    def run(self, mode: str, payloads: list[Any]) -> list[np.ndarray]:  # type: ignore[override]
        import torch

        batch = self.tokenizer().pad(payloads, padding=True, return_tensors="pt")
        features = {key: value.to(self.device) for key, value in batch.items()}
        with torch.inference_mode():
            hidden = self.forward(features).float()
            if self.normalize:
                hidden = torch.nn.functional.normalize(hidden, p=2, dim=-1)
        states = hidden.cpu().numpy()
        mask = batch["attention_mask"].numpy().astype(bool)
        return [states[i][mask[i]] for i in range(len(payloads))]


@BUILTIN.register("colbert")
class ColbertEmbeddings(HuggingFaceEmbeddings):
    """ColBERT-style multi-vector embeddings: the last hidden state of every token.

    LanceDB's ``colbert`` has these create() arguments (name, device, trust_remote_code). Into
    a ``MultiVector(ndims)`` column it stores all token vectors and a search scores them by
    late interaction (MaxSim); into a plain ``Vector(ndims)`` column (a table LanceDB wrote)
    the gateway stores their mean, which is what LanceDB's ``colbert`` computes.
    """

    multi_vector: ClassVar[bool] = True
    # One vector per token: the ONNX export serves single-vector models, so this one stays on
    # torch whatever --backend says.
    onnx_ready: ClassVar[bool] = False
    pipeline_class: ClassVar[type[TokenPipeline]] = TokenVectors

    @staticmethod
    def output(hidden: Any, features: dict[str, Any]) -> Any:
        """Every token's last hidden state (TokenVectors leaves the padding out)."""
        return hidden

    def generate_embeddings(self, texts: list[str]) -> list[np.ndarray]:  # type: ignore[override]
        """One (tokens, ndims) array per text."""
        return self.embed_each(texts)
