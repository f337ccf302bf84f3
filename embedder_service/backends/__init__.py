"""Engines of the local text models: torch, or ONNX Runtime (fp32, int8; fp16 on a GPU)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Backend = Literal["auto", "torch", "onnx", "onnx-int8"]


class BackendSettings(BaseModel):
    """Which engine runs the sentence-transformers and huggingface models of this embedder.

    Held by EmbedderSettings, whose flags (``--backend``, ``--onnx-cache-dir``,
    ``--cuda-graphs``) these fields are. A server-side choice: a function's spec, and so a
    table's metadata, never names it.
    """

    model_config = ConfigDict(extra="forbid")

    backend: Backend = Field(
        "auto",
        description="auto: onnx for a model on the CPU where onnxruntime is installed (the "
        "export made once per cache; torch for a model whose export fails), torch on a GPU; "
        "torch; onnx (ONNX Runtime, fp32 on a CPU, fp16 on a GPU; vectors within cosine "
        "0.9999 of torch's); onnx-int8 (CPU, int8 weights: faster, vectors about 0.998 "
        "cosine of torch's).",
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
        """Whether ONNX Runtime was asked for by name (onnx, onnx-int8)."""
        return self.backend in ("onnx", "onnx-int8")

    def auto_onnx(self, device: str) -> bool:
        """Whether ``auto`` runs a model on ``device`` with ONNX Runtime: on the CPU (``cpu``,
        or ``auto`` where no GPU is visible), where onnxruntime is installed. On a GPU, torch's
        forward pass replayed from CUDA graphs is what was measured fastest (bench/README.md).
        Decided without importing torch or onnxruntime."""
        if self.backend != "auto" or importlib.util.find_spec("onnxruntime") is None:
            return False
        return device == "cpu" or (device == "auto" and not gpu_visible())

    def cache_root(self) -> Path:
        """The directory exported models live in (created when the first one is exported)."""
        if self.onnx_cache_dir:
            return Path(self.onnx_cache_dir)
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        return Path(base) / "embedsearch" / "onnx"


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU is visible to this process, judged without importing torch (whose
    import costs a CPU-only embedder seconds of its start): CUDA_VISIBLE_DEVICES, then the
    driver's device nodes. A GPU that torch cannot use (a CPU build of torch) still counts:
    such an embedder runs torch on the CPU, as it would have before ``auto``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")  # one entry per GPU; the driver's alone is no GPU
    return Path("/dev/nvidia0").exists() or (gpus.is_dir() and any(gpus.iterdir()))
