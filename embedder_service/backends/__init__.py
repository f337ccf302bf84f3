"""Engines of the local text models: torch, or ONNX Runtime (fp32, int8; fp16 on a GPU)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Backend = Literal["torch", "onnx", "onnx-int8"]


class BackendSettings(BaseModel):
    """Which engine runs the sentence-transformers and huggingface models of this embedder.

    Held by EmbedderSettings, whose flags (``--backend``, ``--onnx-cache-dir``,
    ``--cuda-graphs``) these fields are. A server-side choice: a function's spec, and so a
    table's metadata, never names it.
    """

    model_config = ConfigDict(extra="forbid")

    backend: Backend = Field(
        "torch",
        description="torch; onnx (ONNX Runtime, fp32 on a CPU, fp16 on a GPU; vectors within "
        "cosine 0.9999 of torch's); onnx-int8 (CPU, int8 weights: faster, vectors about 0.998 "
        "cosine of torch's). The onnx ones need the `onnx` extra.",
    )
    onnx_cache_dir: str = Field(
        "",
        description="Where models exported to ONNX are kept, one directory per model; empty: "
        "$XDG_CACHE_HOME/embedsearch/onnx, else ~/.cache/embedsearch/onnx.",
    )

    cuda_graphs: bool = Field(
        True,
        description="On a GPU, replay torch's forward pass from CUDA graphs captured per "
        "batch and length bucket (inputs padded up to the bucket); false: eager.",
    )

    @property
    def onnx(self) -> bool:
        return self.backend != "torch"

    def cache_root(self) -> Path:
        """The directory exported models live in (created when the first one is exported)."""
        if self.onnx_cache_dir:
            return Path(self.onnx_cache_dir)
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        return Path(base) / "embedsearch" / "onnx"
