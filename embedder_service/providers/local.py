"""What local-model providers share: device choice, load errors, the tokenize/forward pipeline."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from embedsearch.embeddings.base import check_texts
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
    except (OSError, ValueError, RuntimeError) as exc:  # open_clip reports failed downloads so
        raise FailedPrecondition(
            f"cannot load model {name!r}: {exc}. This server cannot download weights; {hint}"
        ) from exc


class TokenPipeline:
    """Tokenize on any thread, pad and run the model on the inference thread.

    Fast tokenizers are not safe to share between threads, so each thread that tokenizes (or
    pads) works on its own copy.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int,
        forward: Callable[[dict[str, Any]], Any],
        device: str,
        normalize: bool,
        prompts: dict[str, str] | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self._local = threading.local()
        self.max_length = max_length
        self.forward = forward
        self.device = device
        self.normalize = normalize
        self.prompts = prompts or {}

    def tokenizer(self) -> Any:
        tokenizer = getattr(self._local, "tokenizer", None)
        if tokenizer is None:
            tokenizer = self._local.tokenizer = copy.deepcopy(self._tokenizer)
        return tokenizer

    def prepare(self, mode: str, inputs: list[Any]) -> list[tuple[Any, int]]:
        texts = check_texts(inputs)
        prompt = self.prompts.get(mode, "")
        encoded = self.tokenizer()(
            [prompt + text for text in texts], truncation=True, max_length=self.max_length
        )
        keys = list(encoded.keys())
        return [
            ({key: encoded[key][i] for key in keys}, len(encoded["input_ids"][i]))
            for i in range(len(texts))
        ]

    def run(self, mode: str, payloads: list[Any]) -> np.ndarray:
        import torch

        batch = self.tokenizer().pad(payloads, padding=True, return_tensors="pt")
        features = {key: value.to(self.device) for key, value in batch.items()}
        with torch.inference_mode():
            vectors = self.forward(features)
            if self.normalize:
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return vectors.float().cpu().numpy()


def mean_pool(hidden: Any, attention_mask: Any) -> Any:
    """Average of the token vectors, padding excluded."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
