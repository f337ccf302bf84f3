"""The ``open-clip`` provider: text and images embedded into one space by an OpenCLIP model."""

from __future__ import annotations

import io
import logging
import re
import threading
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import AfterValidator, Field, PrivateAttr

from embedder_service.guards import looks_like_path
from embedder_service.providers import BUILTIN
from embedder_service.providers.local import (
    ROOTS_HINT,
    Device,
    model_loading,
    resolve_device,
    run_in_batches,
)
from embedsearch.contract.errors import FailedPrecondition, InvalidArgument
from embedsearch.contract.functions import EmbeddingFunction, check_texts
from embedsearch.contract.text import brief

log = logging.getLogger("embedder_service")

_HINT = f"set pretrained to a local checkpoint path {ROOTS_HINT}"
_ARCHITECTURE = re.compile(r"[A-Za-z0-9][\w.+-]*")


def _architecture(name: str) -> str:
    """open_clip also reads ``hf-hub:org/repo`` and ``local-dir:/path`` names: a download this
    server cannot make and a path no root check sees. Only plain architecture names pass."""
    if _ARCHITECTURE.fullmatch(name) is None:
        raise ValueError(
            f"{brief(name)} is not an open_clip architecture name such as 'ViT-B-32'; load "
            f"local weights through pretrained instead, {ROOTS_HINT}"
        )
    return name


@BUILTIN.register("open-clip")
class OpenClipEmbeddings(EmbeddingFunction):
    """CLIP text and image towers. Images arrive as encoded bytes (PNG, JPEG, ...).

    ``pretrained`` is an open_clip tag or a local checkpoint path; tags need a download this
    server cannot make, so give a path. ``pretrained=None`` builds random weights (tests only).
    """

    default_model: ClassVar[str] = "ViT-B-32"
    modalities: ClassVar[tuple[str, ...]] = ("text", "image")
    path_keys: ClassVar[frozenset[str]] = frozenset({"pretrained"})

    name: Annotated[str, AfterValidator(_architecture)] = Field(
        "ViT-B-32", description="open_clip architecture name."
    )
    pretrained: str | None = Field("laion2b_s34b_b79k", description="Tag or checkpoint path.")
    device: Device = Field("auto", description="auto, cpu, mps, cuda or cuda:N.")
    normalize: bool = Field(True, description="L2-normalize the vectors.")
    batch_size: int = Field(32, ge=1, le=1024, description="Most inputs in one forward pass.")

    _loaded: tuple[Any, Any, Any, str] | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def _load(self) -> tuple[Any, Any, Any, str]:
        with self._lock:
            if self._loaded is None:
                try:
                    import open_clip
                except ImportError as exc:
                    raise FailedPrecondition(
                        "the open-clip provider needs open_clip_torch and torchvision in the "
                        f"embedder's environment (make install-multimodal): {exc}"
                    ) from exc
                device = resolve_device(self.device)
                if self.pretrained is None:
                    log.warning("open-clip %s with random weights: for tests only", self.name)
                else:
                    self._check_tag()
                with model_loading(f"{self.name}/{self.pretrained}", _HINT):
                    model, _, preprocess = open_clip.create_model_and_transforms(
                        self.name, pretrained=self.pretrained, device=device
                    )
                    tokenizer = open_clip.get_tokenizer(self.name)
                if device.startswith("cuda"):
                    model.half()
                self._loaded = (model.eval(), preprocess, tokenizer, device)
            return self._loaded

    def _check_tag(self) -> None:
        """A pretrained value that is no path (those are checked against --model-roots) must be
        one of the architecture's tags: open_clip would try any other as a path relative to
        the server's working directory."""
        from open_clip.pretrained import get_pretrained_cfg

        pretrained = str(self.pretrained)
        if not looks_like_path(pretrained) and not get_pretrained_cfg(self.name, pretrained):
            raise InvalidArgument(
                f"pretrained={brief(pretrained)} is no open_clip tag of {self.name!r}; {_HINT}"
            )

    def pipeline(self) -> OpenClipRunner:
        return OpenClipRunner(*self._load(), normalize=self.normalize)

    def ndims(self) -> int:
        return int(self._embed("query", ["ndims probe"]).shape[1])

    def compute_source_embeddings(self, inputs: Any) -> list[np.ndarray]:
        return list(self._embed("source", list(inputs)))

    def compute_query_embeddings(self, query: Any) -> list[np.ndarray]:
        return list(
            self._embed("query", [query] if isinstance(query, str | bytes) else list(query))
        )

    def _embed(self, mode: str, inputs: list[Any]) -> np.ndarray:
        return np.asarray(run_in_batches(self.pipeline(), mode, inputs, self.batch_size))


class OpenClipRunner:
    """Prepares texts (tokens) and images (decoded, resized tensors); runs both towers."""

    def __init__(
        self, model: Any, preprocess: Any, tokenizer: Any, device: str, normalize: bool
    ) -> None:
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.device, self.normalize = device, normalize

    def prepare(self, mode: str, inputs: list[Any]) -> list[tuple[Any, int]]:
        prepared: list[tuple[Any, int]] = []
        for row, value in enumerate(inputs):
            if isinstance(value, str):
                check_texts([value])
                prepared.append((("text", self.tokenizer([value])[0]), 77))
            else:
                data = value[0] if isinstance(value, tuple) else value
                prepared.append((("image", self.preprocess(_image(data, row))), 50))
        return prepared

    def run(self, mode: str, payloads: list[Any]) -> np.ndarray:
        import torch

        out: list[Any] = [None] * len(payloads)
        dtype = next(self.model.parameters()).dtype
        with torch.inference_mode():
            for kind, encode in (
                ("text", self.model.encode_text),
                ("image", self.model.encode_image),
            ):
                rows = [i for i, (k, _) in enumerate(payloads) if k == kind]
                if not rows:
                    continue
                batch = torch.stack([payloads[i][1] for i in rows]).to(self.device)
                if kind == "image":
                    batch = batch.to(dtype)
                vectors = encode(batch)
                if self.normalize:
                    vectors = torch.nn.functional.normalize(vectors, dim=-1)
                for i, vector in zip(rows, vectors, strict=True):
                    out[i] = vector
            return torch.stack(out).float().cpu().numpy()


def _image(data: bytes, row: int) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidArgument(f"input {row} is not a readable image: {exc}") from exc
    return image.convert("RGB")
