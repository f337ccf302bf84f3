"""The ONNX Runtime backend: a cached export of a local model, run without torch.

A model is exported once per cache directory (``--onnx-cache-dir``), by a child process
(:mod:`embedder_service.backends.onnx_export`) so that torch is never imported into the
server; the server then needs only onnxruntime, the ``tokenizers`` library and numpy. The
pipeline prepares and runs batches under the same batcher as the torch one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from embedder_service.backends import BackendSettings
from embedsearch.contract.errors import FailedPrecondition
from embedsearch.contract.functions import check_texts
from embedsearch.contract.text import brief

log = logging.getLogger("embedder_service")

# Bumped whenever the exporter's output changes, so that older exports are not reused.
EXPORT_FORMAT = 1
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
# Arguments of a provider that do not change the exported graph or its tokenizer.
RUN_ONLY_ARGS = frozenset({"device", "normalize", "batch_size"})

Variant = Literal["fp32", "int8", "fp16"]
# The session threads' spin before they sleep (see open_session).
SPIN_US = 300


@dataclass(frozen=True)
class ExportSpec:
    """What to export: a provider class (``module:Class``), its arguments, and the weights
    directory they load (whose files key the cache)."""

    provider: str
    args: dict[str, Any]
    weights: str

    def directory(self, root: Path) -> Path:
        """This model's directory under the cache ``root``: named by the provider, the
        arguments that shape the graph, the weights files (path, size, modification time),
        the export format and the onnxruntime version."""
        import onnxruntime

        shaping = {k: v for k, v in sorted(self.args.items()) if k not in RUN_ONLY_ARGS}
        key = json.dumps(
            [
                self.provider,
                shaping,
                _fingerprint(self.weights),
                EXPORT_FORMAT,
                onnxruntime.__version__,
            ],
            default=str,
        )
        name = self.provider.rpartition(":")[2].lower()
        return root / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:24]}"


def _fingerprint(weights: str) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime) of every file under the weights directory."""
    root = Path(weights)
    if not root.is_dir():
        return []
    return sorted(
        (str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns)
        for path in root.rglob("*")
        if path.is_file() and (stat := path.stat())
    )


@dataclass(frozen=True)
class Target:
    """Where a session runs and which export it runs: fp32 or int8 on a CPU, fp16 on CUDA."""

    variant: Variant
    providers: list[Any]

    @classmethod
    def choose(cls, backend: BackendSettings, device: str) -> Target:
        """The target for a provider's ``device`` under ``--backend``: ``auto`` is CUDA when
        this onnxruntime has its CUDA execution provider, else the CPU."""
        import onnxruntime

        cuda_here = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        if device == "mps":
            raise FailedPrecondition(
                "device 'mps' is not served by the onnx backend; use device='cpu' or 'auto', "
                "or run the embedder with --backend torch"
            )
        if device == "cpu" or (device == "auto" and not cuda_here):
            variant: Variant = "int8" if backend.backend == "onnx-int8" else "fp32"
            return cls(variant, ["CPUExecutionProvider"])
        if not cuda_here:
            raise FailedPrecondition(
                f"device {device!r} needs onnxruntime's CUDA execution provider, which this "
                "embedder lacks (install onnxruntime-gpu); use device='cpu' or 'auto'"
            )
        if backend.backend == "onnx-int8":
            raise FailedPrecondition(
                "--backend onnx-int8 runs on the CPU only; on a GPU use --backend onnx (fp16), "
                "or device='cpu'"
            )
        index = int(device.partition(":")[2] or 0)
        return cls(
            "fp16", [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        )


class OnnxPipeline:
    """Tokenize on any thread with the ``tokenizers`` library, pad and run the ONNX graph on
    the inference thread: the batcher's runner, without torch.

    One tokenizer serves every thread: a ``tokenizers.Tokenizer`` encodes without changing
    its state (truncation is set once, here), unlike a transformers tokenizer.
    """

    def __init__(self, directory: Path, session: Any, normalize: bool) -> None:
        from tokenizers import Tokenizer

        manifest = json.loads((directory / MANIFEST).read_text())
        self.session = session
        # Where the graph runs, as torch names devices: the batcher bounds padding by it.
        self.device = "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.normalize = normalize
        self.ndims = int(manifest["ndims"])
        self.max_length = int(manifest["max_length"])
        self.prompts: dict[str, str] = manifest["prompts"]
        self.inputs: list[str] = manifest["inputs"]
        self.pad_id = int(manifest["pad_id"])
        self.pad_left = manifest["padding_side"] == "left"
        self._tokenizer = Tokenizer.from_file(str(directory / TOKENIZER))
        self._tokenizer.enable_truncation(self.max_length)

    def prepare(self, mode: str, inputs: list[Any]) -> list[tuple[Any, int]]:
        texts = check_texts(inputs)
        prompt = self.prompts.get(mode, "")
        encoded = self._tokenizer.encode_batch([prompt + text for text in texts])
        return [((e.ids, e.type_ids), len(e.ids)) for e in encoded]

    def run(self, mode: str, payloads: list[Any]) -> np.ndarray:
        longest = max(len(ids) for ids, _ in payloads)
        shape = (len(payloads), longest)
        ids = np.full(shape, self.pad_id, dtype=np.int64)
        types = np.zeros(shape, dtype=np.int64)
        mask = np.zeros(shape, dtype=np.int64)
        for row, (tokens, token_types) in enumerate(payloads):
            span = slice(longest - len(tokens), None) if self.pad_left else slice(len(tokens))
            ids[row, span], types[row, span], mask[row, span] = tokens, token_types, 1
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        (vectors,) = self.session.run(None, {name: arrays[name] for name in self.inputs})
        vectors = vectors.astype(np.float32, copy=False)
        if self.normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return vectors


def model_file(directory: Path, variant: Variant) -> Path:
    return directory / f"model-{variant}.onnx"


def intra_op_threads() -> int:
    """The threads a forward pass runs on, sized as torch sizes its own: OMP_NUM_THREADS where
    set (the Kubernetes manifests set it to the container's CPU limit), else the CPUs this
    process may run on. onnxruntime's own default counts the node's cores, past a limit."""
    configured = os.environ.get("OMP_NUM_THREADS", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return len(os.sched_getaffinity(0))


def open_session(path: Path, providers: list[Any]) -> Any:
    """An inference session with all of onnxruntime's graph optimizations."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # warnings about nodes left on the CPU are not ours to act on
    # onnxruntime's CPU arena keeps the largest batch's activations for the life of the process
    # (1,219 MiB after one batch of 64 x 256 tokens of all-MiniLM-L6-v2, against 480 MiB
    # without it, at the same speed): without it, those blocks go back to the system.
    options.enable_cpu_mem_arena = False
    options.intra_op_num_threads = intra_op_threads()
    # How long the session's threads spin for more work before they sleep. onnxruntime's own
    # default spins long after each run, holding the cores that the store, the gateway or (in
    # embedded mode) the caller's own process need next: a cold text search through
    # connect("./dir") took 44-54 ms p50 with it and 26-31 ms with this bound, on 2 cores. Not
    # spinning at all cost a lone forward pass 2 ms (8.2 -> 10.7 ms) waking threads between ops.
    options.add_session_config_entry("session.intra_op.spin_duration_us", str(SPIN_US))
    return onnxruntime.InferenceSession(str(path), options, providers=providers)


def load_pipeline(
    spec: ExportSpec, backend: BackendSettings, device: str, normalize: bool, name: str
) -> OnnxPipeline:
    """The ONNX pipeline of ``spec`` for ``device`` under ``backend``, exported first if the
    cache lacks it. ``name`` is the model as the caller named it, for messages."""
    try:
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as exc:
        raise FailedPrecondition(
            f"--backend {backend.backend} needs onnxruntime, which this embedder lacks: "
            "pip install 'embedsearch[onnx]', or run it with --backend torch"
        ) from exc
    target = Target.choose(backend, device)
    directory = spec.directory(backend.cache_root())
    path = model_file(directory, target.variant)
    if not exported(directory, path):
        try:
            with export_lock(directory):
                if not exported(directory, path):  # by another embedder while this one waited
                    export(spec, target.variant, directory, name)
        except OSError as exc:
            log.warning("cannot export into %s: %s", directory, exc)
            raise FailedPrecondition(
                f"cannot write the ONNX export of model {brief(name)} ({type(exc).__name__}); "
                "point --onnx-cache-dir at a writable directory, or run the embedder with "
                "--backend torch"
            ) from exc
    try:
        session = open_session(path, target.providers)
    except Exception as exc:  # onnxruntime raises its own classes (a bad file, a lost GPU)
        log.warning("cannot open %s: %s", path, exc)
        raise FailedPrecondition(
            f"cannot run model {brief(name)} with onnxruntime ({type(exc).__name__}; the "
            "embedder's log has the details); delete its export under --onnx-cache-dir to "
            "export it again, or run the embedder with --backend torch"
        ) from exc
    log.info("onnx backend: %s from %s on %s", brief(name), path, session.get_providers()[0])
    return OnnxPipeline(directory, session, normalize)


def exported(directory: Path, path: Path) -> bool:
    return path.exists() and (directory / MANIFEST).exists()


@contextmanager
def export_lock(directory: Path) -> Iterator[None]:
    """Held while ``directory`` is exported: embedders sharing a cache (replicas on one
    volume, a test suite's servers) export a model once, the others wait and load it."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def export(spec: ExportSpec, variant: Variant, directory: Path, name: str) -> None:
    """Export ``spec`` into ``directory`` in a child process, which imports torch so that this
    one does not have to."""
    log.info("exporting %s to ONNX (%s) into %s", brief(name), variant, directory)
    request = {"provider": spec.provider, "args": spec.args, "variant": variant}
    done = subprocess.run(
        [sys.executable, "-m", "embedder_service.backends.onnx_export", str(directory)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=False,
    )
    if done.returncode != 0:
        log.warning("ONNX export of %s failed:\n%s", brief(name), done.stderr[-4000:])
        raise FailedPrecondition(
            f"cannot export model {brief(name)} to ONNX ({variant}; the embedder's log has the "
            "details); run the embedder with --backend torch for this model"
        )
    for line in done.stdout.splitlines():
        log.info("onnx export: %s", line)


def main(argv: list[str] | None = None) -> int:
    """``python -m embedder_service.backends.onnx_runtime DIR``: export the bundled model into
    the cache DIR (fp32 and int8), as an image's build step does, so that embedders pointed at
    DIR (``--onnx-cache-dir``) start on ONNX Runtime without exporting."""
    import argparse

    from embedder_service.providers.sentence_transformers import SentenceTransformerEmbeddings

    parser = argparse.ArgumentParser(prog="python -m embedder_service.backends.onnx_runtime")
    parser.add_argument("cache_dir", help="the ONNX cache directory to export into")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    func = SentenceTransformerEmbeddings(device="cpu")
    func.use_backend(BackendSettings(backend="onnx-int8", onnx_cache_dir=args.cache_dir))
    try:
        func.pipeline()  # exports fp32 (checked against torch), then int8
    except FailedPrecondition as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
