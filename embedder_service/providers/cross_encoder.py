"""The ``cross-encoder`` reranker: a local sentence-transformers CrossEncoder scores pairs."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from embedder_service.providers.local import (
    ROOTS_HINT,
    Device,
    model_loading,
    resolve_device,
    weights_dir,
)
from embedder_service.rerank import RERANKERS, RerankModel, pair_cost

_HINT = f"set model_name to a local cross-encoder directory {ROOTS_HINT}"


@RERANKERS.register("cross-encoder")
class CrossEncoderModel(RerankModel):
    """LanceDB's CrossEncoderReranker arguments; the model is a local directory (under
    --model-roots) or a hub name in this server's cache: nothing is downloaded."""

    path_keys: ClassVar[frozenset[str]] = frozenset({"model_name"})

    model_name: str = Field("cross-encoder/ms-marco-TinyBERT-L-6", description="Model or path.")
    device: Device = Field("auto", description="auto, cpu, mps, cuda or cuda:N.")
    trust_remote_code: bool = Field(True, description="Run code shipped with the model.")
    batch_size: int = Field(32, ge=1, le=4096, description="Most pairs in one forward pass.")
    max_length: int | None = Field(None, ge=1, description="Longest pair, in tokens.")

    def most_per_batch(self) -> int:
        return self.batch_size

    def runner(self) -> CrossEncoderRunner:
        from sentence_transformers import CrossEncoder
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = weights_dir(self.model_name, _HINT)
        kwargs: dict[str, Any] = {}
        if self.max_length is not None:
            kwargs["max_length"] = self.max_length
        with model_loading(self.model_name, _HINT):
            model = CrossEncoder(
                path,
                device=resolve_device(self.device),
                trust_remote_code=self.trust_remote_code,
                **kwargs,
            )
        return CrossEncoderRunner(model, self.batch_size)


class CrossEncoderRunner:
    """Scores a batch with ``CrossEncoder.predict``, as LanceDB's reranker does."""

    def __init__(self, model: Any, batch_size: int) -> None:
        self.model = model
        self.batch_size = batch_size

    def prepare(self, mode: str, inputs: list[Any]) -> list[tuple[Any, int]]:
        return [(pair, pair_cost(pair)) for pair in inputs]

    def run(self, mode: str, payloads: list[Any]) -> np.ndarray:
        scores = self.model.predict(
            [list(pair) for pair in payloads],
            batch_size=self.batch_size,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(scores, dtype=np.float32).reshape(len(payloads), 1)
