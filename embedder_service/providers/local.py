"""What local-model providers share: device choice, load errors, the tokenize/forward pipeline."""

from __future__ import annotations

import copy
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import AfterValidator, PrivateAttr

from embedder_service.backends import BackendSettings
from embedder_service.backends.cuda_graphs import GraphedForward
from embedder_service.guards import looks_like_path
from embedsearch.contract.errors import FailedPrecondition, InvalidArgument
from embedsearch.contract.functions import TextEmbeddingFunction, check_texts
from embedsearch.contract.text import brief

log = logging.getLogger("embedder_service")

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d{1,4})?")
ROOTS_HINT = "under --model-roots (EMBEDDER_MODEL_ROOTS)"
# Models (provider, arguments and export cache) that ``--backend auto`` could not run on ONNX
# Runtime.
_NO_ONNX: set[str] = set()


def resolve_device(device: str) -> str:
    """The torch device to load on: ``auto`` is CUDA when torch sees a GPU, else the CPU.

    Anything else must be a device this machine has: InvalidArgument for what is no device
    name, FailedPrecondition for a device that is absent (``cuda:1`` on a one-GPU machine).
    Called when arguments are validated, so a bad device loads nothing.
    """
    if _DEVICE.fullmatch(device) is None:
        raise InvalidArgument(
            f"device {brief(device)} is not a device: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        )
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "mps":
        if not torch.backends.mps.is_available():
            raise FailedPrecondition(
                "device 'mps' is not available on this machine; use device='cpu' or 'auto'"
            )
        return device
    count = torch.cuda.device_count()
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        others = {0: "", 1: ", 'cuda:0'"}.get(count, f", 'cuda:0' to 'cuda:{count - 1}'")
        raise FailedPrecondition(
            f"device {device!r} is not available: this machine has {count} CUDA devices; "
            f"use device='cpu'{others} or 'auto'"
        )
    return device


def _check_device(device: str) -> str:
    # 'auto' is always valid: resolving it here would import torch into an embedder that runs
    # the onnx backend (the provider resolves it when it loads).
    if device != "auto":
        resolve_device(device)
    return device


#: The type of a local provider's ``device`` argument: checked by :func:`resolve_device` on
#: create(), before any model is loaded.
Device = Annotated[str, AfterValidator(_check_device)]


def weights_dir(name: str, hint: str, hub_ids: Sequence[str] = ()) -> str:
    """The directory to load model ``name`` from.

    A path is used as given: the core checked it against --model-roots. Anything else is a hub
    name (``hub_ids``, default ``[name]``, are the ids it may stand for), looked up in this
    server's Hugging Face cache, so that a loader never reads a name as a path relative to the
    working directory. FailedPrecondition, the same message whatever the reason, when none is
    cached.
    """
    if looks_like_path(name):
        return name
    from huggingface_hub import snapshot_download

    for repo_id in hub_ids or [name]:
        try:
            return str(snapshot_download(repo_id, local_files_only=True))
        except (OSError, ValueError) as exc:  # not cached, or no valid hub id
            log.debug("model %s not cached as %s: %s", brief(name), brief(repo_id), exc)
    raise FailedPrecondition(
        f"model {brief(name)} is not in this server's model cache, and this server cannot "
        f"download weights; {hint}"
    )


@contextmanager
def model_loading(name: str, hint: str) -> Iterator[None]:
    """Turn "weights not found / not loadable" into FAILED_PRECONDITION naming the fix.

    What the loader said goes to the log, not to the caller: it can name server paths.
    """
    try:
        yield
    except (OSError, ValueError, RuntimeError) as exc:  # open_clip reports failed downloads so
        log.warning("cannot load model %s: %s", brief(name), exc)
        raise FailedPrecondition(
            f"cannot load model {brief(name)} ({type(exc).__name__}; the embedder's log has "
            f"the details). This server cannot download weights; {hint}"
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
        self.graphed: GraphedForward | None = None

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

    def use_graphs(self, max_batch: int, capture: bool = True) -> None:
        """Replay the forward pass from CUDA graphs (``capture=False``: run their padded
        buckets eagerly), for batches of up to ``max_batch`` inputs."""
        self.graphed = GraphedForward(
            self.vectors,
            self.device,
            self._tokenizer.pad_token_id or 0,  # masked: any id would do
            max_batch,
            self.max_length,
            capture,
        )

    def vectors(self, features: dict[str, Any]) -> Any:
        """The forward pass on token features on the device, normalized in fp32 (not fp16)."""
        import torch

        vectors = self.forward(features).float()
        return torch.nn.functional.normalize(vectors, p=2, dim=1) if self.normalize else vectors

    def run(self, mode: str, payloads: list[Any]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            vectors = self.graphed(payloads) if self.graphed is not None else None
            if vectors is None:
                batch = self.tokenizer().pad(payloads, padding=True, return_tensors="pt")
                vectors = self.vectors({key: value.to(self.device) for key, value in batch.items()})
        return vectors.cpu().numpy()


def mean_pool(hidden: Any, attention_mask: Any) -> Any:
    """Average of the token vectors, padding excluded."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def run_in_batches(pipeline: Any, mode: str, inputs: list[Any], batch_size: int) -> list[Any]:
    """What ``pipeline`` gives for each input, prepared and then run ``batch_size`` at a time:
    a function's own ``generate_embeddings``, outside the embedder's batcher."""
    prepared = [payload for payload, _ in pipeline.prepare(mode, inputs)]
    return [
        output
        for start in range(0, len(prepared), batch_size)
        for output in pipeline.run(mode, prepared[start : start + batch_size])
    ]


class LocalTextEmbeddings(TextEmbeddingFunction):
    """A text model run on this server, by torch or by ONNX Runtime (the embedder's --backend).

    Subclasses load the torch model (:meth:`torch_model`, :meth:`torch_pipeline`,
    :meth:`torch_ndims`) and name its weights (:meth:`weights`); this class picks the engine.
    The backend is the server's, not an argument: a table's metadata never names it.
    """

    # Whether the forward pass gives one vector per input, which the ONNX export serves.
    onnx_ready: ClassVar[bool] = True

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _backend: BackendSettings = PrivateAttr(default_factory=BackendSettings)
    _onnx: Any = PrivateAttr(default=None)
    _torch: Any = PrivateAttr(default=None)
    _auto_onnx: bool | None = PrivateAttr(default=None)

    def use_backend(self, backend: BackendSettings) -> None:
        """Run on ``backend`` (the embedder calls this before anything is loaded)."""
        self._backend = backend

    def weights(self) -> str:
        """The directory the model loads from."""
        raise NotImplementedError

    def torch_model(self) -> Any:
        """The loaded torch module the forward pass runs."""
        raise NotImplementedError

    def torch_pipeline(self) -> TokenPipeline:
        raise NotImplementedError

    def torch_ndims(self) -> int:
        raise NotImplementedError

    def on_onnx(self) -> bool:
        """Whether ONNX Runtime runs this model: under --backend onnx or onnx-int8; under auto
        where it applies (:meth:`BackendSettings.auto_onnx`) and the model's export loads,
        decided once per function (a model whose export fails is served by torch)."""
        if not self.onnx_ready:
            return False
        if self._backend.backend != "auto":
            return self._backend.onnx
        if self._auto_onnx is None:
            self._auto_onnx = self._backend.auto_onnx(self.device) and self._onnx_loads()
        return self._auto_onnx

    def _onnx_loads(self) -> bool:
        """Load the ONNX pipeline for ``auto``; False, with the reason logged, where it cannot
        be (once per model and process: an export is not tried again)."""
        key = json.dumps(
            [type(self).__qualname__, self.model_dump(), str(self._backend.cache_root())],
            default=str,
        )
        if key in _NO_ONNX:
            return False
        try:
            self.onnx_pipeline()
        except FailedPrecondition as exc:
            log.warning("model %s is served by torch: %s", brief(self.name), exc)
            _NO_ONNX.add(key)
            return False
        return True

    def pipeline(self) -> Any:
        """Tokenize per request, batch across callers, forward on the inference thread."""
        if self.on_onnx():
            return self.onnx_pipeline()
        if self._torch is None:  # built once: its tokenizers and graphs are kept
            pipeline = self.torch_pipeline()
            if self._backend.cuda_graphs and pipeline.device.startswith("cuda"):
                pipeline.use_graphs(getattr(self, "batch_size", 64))
            self._torch = pipeline
        return self._torch

    def ndims(self) -> int:
        return self.onnx_pipeline().ndims if self.on_onnx() else self.torch_ndims()

    def onnx_pipeline(self) -> Any:
        """The ONNX Runtime pipeline, exported on first use into --onnx-cache-dir."""
        with self._lock:
            if self._onnx is None:
                from embedder_service.backends.onnx_runtime import ExportSpec, load_pipeline

                cls = type(self)
                spec = ExportSpec(
                    f"{cls.__module__}:{cls.__qualname__}", self.model_dump(), self.weights()
                )
                self._onnx = load_pipeline(
                    spec, self._backend, self.device, self.normalize, self.name
                )
            return self._onnx
