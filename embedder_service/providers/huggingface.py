"""The ``huggingface`` provider: any transformers AutoModel, mean-pooled, from a local directory."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field, PrivateAttr

from embedder_service.providers import BUILTIN
from embedder_service.providers.local import (
    ROOTS_HINT,
    Device,
    LocalTextEmbeddings,
    TokenPipeline,
    mean_pool,
    model_loading,
    resolve_device,
    run_in_batches,
    weights_dir,
)

_HINT = f"set name to a local directory holding the model and its tokenizer {ROOTS_HINT}"


@BUILTIN.register("huggingface")
class HuggingFaceEmbeddings(LocalTextEmbeddings):
    """Mean-pooled last hidden states of a transformers model (the default is ColBERTv2's BERT)."""

    default_model: ClassVar[str] = "colbert-ir/colbertv2.0"
    path_keys: ClassVar[frozenset[str]] = frozenset({"name"})

    name: str = Field("colbert-ir/colbertv2.0", description="Model directory or cached hub name.")
    device: Device = Field("auto", description="auto, cpu, mps, cuda or cuda:N.")
    normalize: bool = Field(False, description="L2-normalize the vectors.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the model.")
    max_length: int = Field(512, ge=1, description="Tokens kept per input.")
    batch_size: int = Field(32, ge=1, le=4096, description="Most texts in one forward pass.")

    _loaded: tuple[Any, Any, str] | None = PrivateAttr(default=None)

    def _load(self) -> tuple[Any, Any, str]:
        with self._lock:
            if self._loaded is None:
                from transformers import AutoModel, AutoTokenizer

                device = resolve_device(self.device)
                path = self.weights()
                with model_loading(self.name, _HINT):
                    tokenizer = AutoTokenizer.from_pretrained(
                        path, trust_remote_code=self.trust_remote_code
                    )
                    model = AutoModel.from_pretrained(
                        path, trust_remote_code=self.trust_remote_code
                    )
                model = model.to(device).eval()
                if device.startswith("cuda"):
                    model.half()
                self._loaded = (tokenizer, model, device)
            return self._loaded

    # The tokenize/forward pipeline the batcher runs, and what the forward pass returns.
    pipeline_class: ClassVar[type[TokenPipeline]] = TokenPipeline

    def weights(self) -> str:
        return weights_dir(self.name, _HINT)

    def torch_model(self) -> Any:
        return self._load()[1]

    def torch_pipeline(self) -> TokenPipeline:
        tokenizer, model, device = self._load()
        max_length = min(self.max_length, getattr(tokenizer, "model_max_length", self.max_length))

        def forward(features: dict[str, Any]) -> Any:
            return self.output(model(**features).last_hidden_state, features)

        return self.pipeline_class(tokenizer, max_length, forward, device, self.normalize)

    @staticmethod
    def output(hidden: Any, features: dict[str, Any]) -> Any:
        """One vector per input: the mean of its tokens' last hidden states."""
        return mean_pool(hidden, features["attention_mask"])

    def torch_ndims(self) -> int:
        """The model's hidden size."""
        return int(self._load()[1].config.hidden_size)

    def embed_each(self, texts: list[str]) -> list[Any]:
        """What the pipeline gives for each text, in batches of ``batch_size``."""
        return run_in_batches(self.pipeline(), "source", texts, self.batch_size)

    def generate_embeddings(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.embed_each(texts))
