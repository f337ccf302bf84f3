"""A custom provider loaded as a plugin: a deterministic hashing embedder, registered by name."""

from __future__ import annotations

import hashlib
import time
from typing import ClassVar

import numpy as np
from pydantic import ValidationInfo, field_validator

from embedsearch.embeddings import TextEmbeddingFunction, register


@register("toy-hash")
class ToyHashEmbeddings(TextEmbeddingFunction):
    """Bag of hashed words, so texts sharing words are close. Deterministic, no model."""

    dims: int = 16

    def ndims(self) -> int:
        return self.dims

    def generate_embeddings(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, hashlib.sha256(word.encode()).digest()[0] % self.dims] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


@register("toy-slow")
class ToySlowEmbeddings(ToyHashEmbeddings):
    """The hashing embedder, taking ``delay_s`` per batch: lets tests fill the embedder's queue."""

    delay_s: float = 0.5

    def generate_embeddings(self, texts: list[str]) -> np.ndarray:
        time.sleep(self.delay_s)
        return super().generate_embeddings(texts)


@register("toy-counted")
class ToyCountedEmbeddings(ToyHashEmbeddings):
    """The hashing embedder, recording every validation of its arguments: ``(tag, api_key)``
    per call of its validator, with the key as the provider receives it (references resolved).
    """

    validated: ClassVar[list[tuple[str, str]]] = []

    tag: str = ""
    api_key: str = ""

    @field_validator("api_key")
    @classmethod
    def _record(cls, api_key: str, info: ValidationInfo) -> str:
        cls.validated.append((info.data.get("tag", ""), api_key))
        return api_key
