"""Export a local model to ONNX: ``python -m embedder_service.backends.onnx_export DIR``.

Reads ``{"provider": "module:Class", "args": {...}, "variant": "fp32"|"int8"|"fp16"}`` on
stdin. The provider's own torch pipeline is the reference: its forward pass (transformer,
pooling and any further modules) is traced into one graph, whose attention, layer norms and
GELUs onnxruntime's transformer optimizer fuses. Every file is checked against torch on probe
texts, written beside the others and moved into ``DIR`` atomically, so that replicas sharing
a cache never read half a file. Run by the embedder (onnx_runtime.export), never imported by it.
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedder_service.backends.onnx_runtime import (
    EXPORT_FORMAT,
    MANIFEST,
    TOKENIZER,
    OnnxPipeline,
    Variant,
    model_file,
    open_session,
)

# The fp32 graph must give torch's vectors; a fused graph that does not is replaced by the
# plain export.
MIN_COSINE_FP32 = 0.9999
# Texts of varied lengths, one past any model's max_length, to check an export with.
PROBES = [
    "hello",
    "The quick brown fox jumps over the lazy dog.",
    "ONNX Runtime fuses attention, layer normalization and GELU into single kernels.",
    "Vectors are compared by cosine similarity; identical inputs give identical vectors.",
    "a " * 700,
    "Ünïcödé, emoji 🙂 and numbers 3.14159 mixed in one sentence — with punctuation!",
]


class Graph(torch.nn.Module):
    """A provider's forward pass as a module of positional tensors, for the tracer."""

    def __init__(self, model: torch.nn.Module, forward: Any, names: list[str]) -> None:
        super().__init__()
        self.model = model  # registered, so its weights are the graph's initializers
        self.names = names
        self._forward = forward

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self._forward(dict(zip(self.names, tensors, strict=True)))


def provider(spec: dict[str, Any]) -> Any:
    module, _, name = spec["provider"].partition(":")
    cls = getattr(importlib.import_module(module), name)
    return cls(**{**spec["args"], "device": "cpu"})


def eager_attention(model: torch.nn.Module) -> None:
    """Switch transformers models to their plain attention: its MatMul/Softmax pattern is what
    onnxruntime's optimizer fuses into one Attention kernel (SDPA's graph is left unfused)."""
    for module in model.modules():
        setter = getattr(module, "set_attn_implementation", None)
        if setter is not None and getattr(module, "config", None) is not None:
            try:
                setter("eager")
            except (ValueError, NotImplementedError, AttributeError):
                return  # a model without an eager path is exported as it is


def export_graph(func: Any, pipeline: Any, path: Path) -> list[str]:
    """Trace the provider's forward pass into ``path``; returns the graph's input names."""
    model = func.torch_model()
    eager_attention(model)
    example = pipeline.tokenizer()(
        ["an example input", "a somewhat longer example input for the tracer"],
        padding=True,
        return_tensors="pt",
    )
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in example]
    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python-side constants
        # The TorchScript exporter: its graphs are the ones onnxruntime's transformer
        # optimizer knows how to fuse.
        torch.onnx.export(
            Graph(model, pipeline.forward, names).eval(),
            tuple(example[name] for name in names),
            str(path),
            input_names=names,
            output_names=["embedding"],
            dynamic_axes={**axes, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return names


def fuse(source: Path, target: Path, config: Any, fp16: bool = False) -> None:
    """onnxruntime's transformer optimizer: fused attention, layer norms, GELU."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(
        str(source),
        model_type="bert",
        num_heads=int(getattr(config, "num_attention_heads", 0) or 0),
        hidden_size=int(getattr(config, "hidden_size", 0) or 0),
        opt_level=0,  # fusions only; the session applies the rest when it loads
    )
    if fp16:
        optimized.convert_float_to_float16(keep_io_types=True)
    optimized.save_model_to_file(str(target))


def quantize(source: Path, target: Path) -> None:
    """Dynamic int8 weights, chosen for recall: per channel, matrix multiplications only (the
    fused attention and the embeddings stay fp32), and not the one after each GELU, whose
    inputs have the outliers that cost the most. On all-MiniLM-L6-v2 that takes the mean
    cosine to torch from 0.960 (every op, per tensor) to 0.998, recall@10 from 0.83 to 0.95."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False).graph
    activations = {"Gelu", "BiasGelu", "FastGelu", "QuickGelu"}
    gelu_outputs = {
        out for node in graph.node if node.op_type in activations for out in node.output
    }
    after_gelu = [
        node.name
        for node in graph.node
        if node.op_type == "MatMul" and node.input and node.input[0] in gelu_outputs
    ]
    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=after_gelu,
        # The fused ops are outside ONNX's own domain, where shape inference cannot type them.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def save_tokenizer(pipeline: Any, directory: Path) -> dict[str, Any]:
    """The provider's fast tokenizer as ``tokenizer.json``, and what padding needs."""
    from tokenizers import Tokenizer

    tokenizer = pipeline.tokenizer()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise SystemExit("the onnx backend needs a fast (Rust) tokenizer; this model has none")
    plain = Tokenizer.from_str(backend.to_str())
    plain.no_padding()
    plain.no_truncation()
    plain.save(str(directory / TOKENIZER))
    return {
        "pad_id": int(tokenizer.pad_token_id or 0),
        "padding_side": str(getattr(tokenizer, "padding_side", "right")),
    }


def cosines(pipeline: Any, reference: np.ndarray) -> dict[str, float]:
    prepared = [payload for payload, _ in pipeline.prepare("source", PROBES)]
    vectors = pipeline.run("source", prepared)
    a = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    b = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    similarity = (a * b).sum(axis=1)
    return {"mean": float(similarity.mean()), "min": float(similarity.min())}


def build(spec: dict[str, Any], directory: Path) -> None:
    func = provider(spec)
    pipeline = func.torch_pipeline()
    reference = np.asarray(
        pipeline.run("source", [p for p, _ in pipeline.prepare("source", PROBES)]), np.float32
    )
    directory.mkdir(parents=True, exist_ok=True)
    manifest_path = directory / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    with tempfile.TemporaryDirectory(dir=directory, prefix=".export-") as tmp:
        work = Path(tmp)
        config = transformer_config(func.torch_model())
        fresh = {
            "format": EXPORT_FORMAT,
            "ndims": int(reference.shape[1]),
            "max_length": int(pipeline.max_length),
            "prompts": dict(pipeline.prompts),
            **save_tokenizer(pipeline, work),
        }
        raw = work / "raw.onnx"
        fresh["inputs"] = export_graph(func, pipeline, raw)
        (work / MANIFEST).write_text(json.dumps({**manifest, **fresh}))
        variant: Variant = spec["variant"]
        checked: dict[str, Any] = {}
        fused = model_file(work, "fp32")
        fuse(raw, fused, config)
        checked["fp32"] = cosines(_session(work, fused), reference)
        if checked["fp32"]["min"] < MIN_COSINE_FP32:
            print(f"fused graph strays from torch ({checked['fp32']}); using the plain export")
            raw.replace(fused)
            checked["fp32"] = cosines(_session(work, fused), reference)
        if checked["fp32"]["min"] < MIN_COSINE_FP32:
            raise SystemExit(f"the ONNX export strays from torch: cosine {checked['fp32']}")
        if variant == "int8":
            quantize(fused, model_file(work, "int8"))
        elif variant == "fp16":
            fuse(raw if raw.exists() else fused, model_file(work, "fp16"), config, fp16=True)
        if variant != "fp32":
            checked[variant] = _checked_anywhere(work, variant, reference)
        for name, figures in checked.items():
            print(f"{name}: cosine to torch on {len(PROBES)} probes {figures}")
        fresh["variants"] = {**manifest.get("variants", {}), **checked}
        (work / MANIFEST).write_text(json.dumps({**manifest, **fresh}, indent=1))
        # The manifest last: a reader that finds it finds the files it describes.
        for path in [*(model_file(work, v) for v in checked), work / TOKENIZER, work / MANIFEST]:
            path.replace(directory / path.name)


def transformer_config(model: torch.nn.Module) -> Any:
    """The transformers config of the first submodule that has one (a SentenceTransformer
    holds its transformer a level or two down)."""
    configs = (getattr(m, "config", None) for m in model.modules())
    return next((c for c in configs if hasattr(c, "hidden_size")), None)


def _session(directory: Path, path: Path, providers: list[str] | None = None) -> OnnxPipeline:
    session = open_session(path, providers or ["CPUExecutionProvider"])
    return OnnxPipeline(directory, session, normalize=False)


def _checked_anywhere(directory: Path, variant: Variant, reference: np.ndarray) -> dict[str, Any]:
    """An fp16 graph is for CUDA; where this machine cannot run it, it is left unchecked."""
    try:
        return cosines(_session(directory, model_file(directory, variant)), reference)
    except Exception as exc:  # onnxruntime's own classes: no CPU kernel for an fp16 op
        return {"unchecked": f"{type(exc).__name__}: {str(exc)[:200]}"}


def main() -> None:
    build(json.loads(sys.stdin.read()), Path(sys.argv[1]))


if __name__ == "__main__":
    main()
