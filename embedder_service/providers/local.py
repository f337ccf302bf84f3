"""What local-model providers share: device choice and turning load failures into clear errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from embedsearch.errors import FailedPrecondition


def resolve_device(device: str) -> str:
    """``auto`` picks CUDA when torch sees a GPU, else the CPU; anything else is used as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextmanager
def model_loading(name: str, hint: str) -> Iterator[None]:
    """Turn "weights not found / not downloadable" into FAILED_PRECONDITION naming the fix."""
    try:
        yield
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(
            f"cannot load model {name!r}: {exc}. This server cannot download weights; {hint}"
        ) from exc
