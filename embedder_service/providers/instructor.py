"""The ``instructor`` provider: INSTRUCTOR models (InstructorEmbedding), with task instructions."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, PrivateAttr

from embedder_service.providers import BUILTIN
from embedder_service.providers.local import (
    ROOTS_HINT,
    Device,
    model_loading,
    resolve_device,
    weights_dir,
)
from embedsearch.contract.errors import FailedPrecondition
from embedsearch.contract.functions import TextEmbeddingFunction, check_texts

_HINT = f"set name to a local INSTRUCTOR model directory {ROOTS_HINT}"
# What InstructorEmbedding's INSTRUCTOR takes from SentenceTransformer: 1.0.1 overrides
# _load_sbert_model (so that its Transformer and Pooling modules load) and calls _text_length.
_NEEDED = ("_load_sbert_model", "_text_length")


def instructor_class() -> Any:
    """InstructorEmbedding's INSTRUCTOR class, or FailedPrecondition naming what is missing.

    InstructorEmbedding 1.0.1 (its last release) is written for sentence-transformers 2.2:
    against a sentence-transformers without the methods it overrides and calls, it would load
    a model without its instruction masking and fail on encode. That is refused, not served.
    """
    try:
        from InstructorEmbedding import INSTRUCTOR
    except ImportError as exc:
        raise FailedPrecondition(
            "the instructor provider needs the InstructorEmbedding package in the embedder's "
            f"environment, with a sentence-transformers it supports (2.2.x): {exc}"
        ) from exc
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    missing = [name for name in _NEEDED if not hasattr(SentenceTransformer, name)]
    if missing:
        raise FailedPrecondition(
            "the instructor provider cannot run here: InstructorEmbedding's INSTRUCTOR needs "
            f"SentenceTransformer.{' and .'.join(missing)}, which sentence-transformers "
            f"{sentence_transformers.__version__} no longer has; run it in an embedder whose "
            "environment has InstructorEmbedding with sentence-transformers 2.2.x"
        )
    return INSTRUCTOR


@BUILTIN.register("instructor")
class InstructorEmbeddings(TextEmbeddingFunction):
    """INSTRUCTOR embeddings: each text is embedded with the instruction of its mode.

    Arguments are LanceDB's. ``name`` is a hub name in the server's cache or a local
    directory (under --model-roots); nothing is downloaded.
    """

    default_model: ClassVar[str] = "hkunlp/instructor-base"
    path_keys: ClassVar[frozenset[str]] = frozenset({"name"})

    name: str = Field("hkunlp/instructor-base", description="Model name or directory.")
    batch_size: int = Field(32, ge=1, le=4096, description="Most texts in one forward pass.")
    device: Device = Field("cpu", description="auto, cpu, mps, cuda or cuda:N.")
    show_progress_bar: bool = Field(True, description="Accepted for LanceDB; never shown.")
    normalize_embeddings: bool = Field(True, description="L2-normalize the vectors.")
    quantize: bool = Field(False, description="int8 dynamic quantization of Linear layers.")
    source_instruction: str = Field(
        "represent the document for retrieval", description="Instruction for documents."
    )
    query_instruction: str = Field(
        "represent the document for retrieving the most similar documents",
        description="Instruction for queries.",
    )

    _model: Any = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def model(self) -> Any:
        """The loaded INSTRUCTOR model, loaded on first use."""
        with self._lock:
            if self._model is None:
                instructor = instructor_class()
                path = weights_dir(self.name, _HINT)
                device = resolve_device(self.device)
                with model_loading(self.name, _HINT):
                    model = instructor(path, device=device)
                if self.quantize:
                    import torch

                    if "qnnpack" in torch.backends.quantized.supported_engines:
                        torch.backends.quantized.engine = "qnnpack"  # pytorch/pytorch#29327
                    model = torch.quantization.quantize_dynamic(
                        model, {torch.nn.Linear}, dtype=torch.qint8
                    )
                self._model = model
            return self._model

    def ndims(self) -> int:
        return int(self.generate_embeddings([[self.source_instruction, "foo"]]).shape[1])

    def compute_query_embeddings(self, query: Any) -> list[np.ndarray]:
        texts = check_texts([query] if isinstance(query, str) else list(query))
        return list(self.generate_embeddings([[self.query_instruction, t] for t in texts]))

    def compute_source_embeddings(self, inputs: Any) -> list[np.ndarray]:
        texts = check_texts(list(inputs))
        return list(self.generate_embeddings([[self.source_instruction, t] for t in texts]))

    def generate_embeddings(self, texts: list[Any]) -> np.ndarray:
        """Embed ``[instruction, text]`` pairs."""
        return self.model().encode(
            texts,
            batch_size=self.batch_size,
            show_progress_bar=False,
            normalize_embeddings=self.normalize_embeddings,
        )
