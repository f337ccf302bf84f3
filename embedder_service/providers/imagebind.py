"""The ``imagebind`` provider: text, images, audio and video in one space, by ImageBind."""

from __future__ import annotations

import inspect
import io
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, PrivateAttr

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

log = logging.getLogger("embedder_service")

_INSTALL = (
    "the imagebind provider needs the multimodal environment in the embedder: "
    "pip install 'embedsearch[imagebind]' (imagebind-unofficial, torchaudio, torchvision, "
    "pytorchvideo, av; make install-multimodal here)"
)
_HINT = f"set checkpoint_path to a local ImageBind checkpoint (imagebind_huge.pth) {ROOTS_HINT}"
#: A checkpoint may carry the ImageBindModel(...) arguments it was trained with under this key,
#: beside ``state_dict``: a reduced configuration (tests). Without it, the file is a plain
#: state dict of imagebind_huge, as Meta publishes it.
CONFIG_KEY = "imagebind_config"
HUGE_NDIMS = 1024
# What one input costs the batcher, in transformer tokens: 77 text tokens; 16x16 patches and a
# class token per 224x224 image; per audio clip (128 mel bins x 204 frames, 16/10 patches)
# 12x19+1; each video clip is cut in three 224x224 crops of two frames each.
_IMAGE_TOKENS = 257
_AUDIO_CLIP_TOKENS = 229

#: ImageBind's name of each modality the embedder speaks (video goes through the vision tower).
_TOWER = {"text": "text", "image": "vision", "audio": "audio", "video": "vision"}
# The frame size and CLIP normalisation imagebind.data applies to video frames (inline there).
_CROP = 224
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _import_imagebind() -> tuple[Any, Any]:
    """The package's ``data`` and ``imagebind_model`` modules, or FAILED_PRECONDITION.

    pytorchvideo 0.1.5, which imagebind's data module imports, still reads
    ``torchvision.transforms.functional_tensor``, renamed ``_functional_tensor`` in
    torchvision 0.17: the old name is pointed at the new module before the import.
    """
    try:
        import torchvision.transforms._functional_tensor as functional_tensor

        sys.modules.setdefault("torchvision.transforms.functional_tensor", functional_tensor)
        from imagebind import data
        from imagebind.models import imagebind_model
    except (ImportError, OSError, RuntimeError) as exc:  # absent, or built for another torch
        raise FailedPrecondition(f"{_INSTALL}: {exc}") from exc
    return data, imagebind_model


def _defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """The keyword defaults of one of imagebind's loaders: the clip lengths, counts and
    normalisation it was trained with, read from the package rather than restated here."""
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


@BUILTIN.register("imagebind")
class ImageBindEmbeddings(EmbeddingFunction):
    """ImageBind's text, vision and audio towers, one space for text, images, audio and video.

    Blobs arrive as encoded bytes with a MIME type: ``image/*`` (PNG, JPEG, ...), ``audio/*``
    (WAV, FLAC, MP3, OGG, ...) and ``video/*`` (MP4, WebM, ...). Weights are never downloaded:
    ``checkpoint_path`` names a local ``imagebind_huge.pth``.

    Examples
    --------
    >>> func = get_registry().get("imagebind").create(  # doctest: +SKIP
    ...     checkpoint_path="/models/imagebind_huge.pth", normalize=True)
    """

    default_model: ClassVar[str] = "imagebind_huge"
    modalities: ClassVar[tuple[str, ...]] = ("text", "image", "audio", "video")
    path_keys: ClassVar[frozenset[str]] = frozenset({"checkpoint_path"})

    name: Literal["imagebind_huge"] = Field(
        "imagebind_huge", description="ImageBind model; imagebind_huge is the one released."
    )
    checkpoint_path: str | None = Field(
        None, description="Local checkpoint file (imagebind_huge.pth); required."
    )
    device: Device = Field("cpu", description="auto, cpu, mps, cuda or cuda:N.")
    normalize: bool = Field(
        False,
        description="L2-normalize the vectors (ImageBind scales text and audio otherwise).",
    )
    batch_size: int = Field(16, ge=1, le=1024, description="Most inputs in one forward pass.")

    _loaded: tuple[Any, str] | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def _load(self) -> tuple[Any, str]:
        with self._lock:
            if self._loaded is None:
                if self.checkpoint_path is None:
                    raise FailedPrecondition(
                        f"the imagebind provider cannot download weights; {_HINT}"
                    )
                _, imagebind_model = _import_imagebind()
                device = resolve_device(self.device)
                with model_loading(self.name, _HINT):
                    model = load_checkpoint(imagebind_model, self.checkpoint_path)
                self._loaded = (model.to(device).eval(), device)
            return self._loaded

    def pipeline(self) -> ImageBindRunner:
        model, device = self._load()
        return ImageBindRunner(model, device, self.normalize)

    def ndims(self) -> int:
        model, _ = self._load()
        return int(model.modality_heads["text"].proj[-1].out_features)

    def compute_source_embeddings(self, inputs: Any) -> list[np.ndarray]:
        return list(self._embed("source", list(inputs)))

    def compute_query_embeddings(self, query: Any) -> list[np.ndarray]:
        inputs = [query] if isinstance(query, str | bytes | tuple) else list(query)
        return list(self._embed("query", inputs))

    def _embed(self, mode: str, inputs: list[Any]) -> np.ndarray:
        return np.asarray(run_in_batches(self.pipeline(), mode, inputs, self.batch_size))


def load_checkpoint(imagebind_model: Any, path: str) -> Any:
    """An ImageBindModel with the weights in ``path``: imagebind_huge for a plain state dict,
    or the configuration the file names under ``imagebind_config``."""
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict) and CONFIG_KEY in checkpoint:
        model = imagebind_model.ImageBindModel(**checkpoint[CONFIG_KEY])
        state = checkpoint["state_dict"]
    else:
        model = imagebind_model.imagebind_huge(pretrained=False)
        state = checkpoint
    model.load_state_dict(state, strict=True)
    return model


def save_checkpoint(model: Any, config: dict[str, Any], path: str) -> None:
    """Write ``model`` (built as ``ImageBindModel(**config)``) so that :func:`load_checkpoint`
    builds the same configuration back."""
    import torch

    torch.save({CONFIG_KEY: dict(config), "state_dict": model.state_dict()}, path)


class ImageBindRunner:
    """Decodes and transforms each input with imagebind's own preprocessing (on a tokenizer
    thread); runs each modality's tower on its own sub-batch (on the inference thread)."""

    def __init__(self, model: Any, device: str, normalize: bool) -> None:
        self.data, _ = _import_imagebind()
        self.model, self.device, self.normalize = model, device, normalize
        self.audio_args = _defaults(self.data.load_and_transform_audio_data)
        self.video_args = _defaults(self.data.load_and_transform_video_data)

    def prepare(self, mode: str, inputs: list[Any]) -> list[tuple[Any, int]]:
        prepared: list[tuple[Any, int]] = []
        for row, value in enumerate(inputs):
            if isinstance(value, str):
                check_texts([value])
                tokens = self.data.load_and_transform_text([value], "cpu")[0]
                prepared.append((("text", tokens), 77))
                continue
            data, mime = value if isinstance(value, tuple) else (value, "")
            kind = modality_of(bytes(data), mime, row)
            tensor = getattr(self, f"_{kind}")(bytes(data), row)
            cost = {
                "image": _IMAGE_TOKENS,
                "audio": _AUDIO_CLIP_TOKENS * len(tensor),
                "video": _IMAGE_TOKENS * len(tensor),
            }[kind]
            prepared.append(((kind, tensor), cost))
        return prepared

    def run(self, mode: str, payloads: list[Any]) -> np.ndarray:
        import torch

        out: list[Any] = [None] * len(payloads)
        with torch.inference_mode():
            for kind, tower in _TOWER.items():
                rows = [i for i, (k, _) in enumerate(payloads) if k == kind]
                if not rows:
                    continue
                batch = torch.stack([payloads[i][1] for i in rows]).to(self.device)
                vectors = self.model({tower: batch})[tower]
                if self.normalize:
                    vectors = torch.nn.functional.normalize(vectors, dim=-1)
                for i, vector in zip(rows, vectors, strict=True):
                    out[i] = vector
            return torch.stack(out).float().cpu().numpy()

    def _image(self, data: bytes, row: int) -> Any:
        """imagebind's image transform (resize, crop to 224, CLIP normalisation), through its
        own loader, which reads files: the bytes go through a temporary one."""
        from PIL import Image, UnidentifiedImageError

        try:
            Image.open(io.BytesIO(data)).verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise InvalidArgument(f"input {row} is not a readable image: {exc}") from exc
        with _as_file(data) as path:
            return self.data.load_and_transform_vision_data([path], "cpu")[0]

    def _video(self, data: bytes, row: int) -> Any:
        """imagebind's video loader, step by step: clips sampled along the video, two frames
        each, scaled, normalised and cut in three crops, with the package's own pieces and
        decord as its decoder. (Its loader itself passes pytorchvideo a ``sample_rate`` that
        the released pytorchvideo 0.1.5 does not take.)"""
        import torch
        from pytorchvideo import transforms as pv_transforms
        from pytorchvideo.data.clip_sampling import ConstantClipsPerVideoSampler
        from pytorchvideo.data.encoded_video import select_video_class

        args, data_module = self.video_args, self.data
        duration = args["clip_duration"]
        # pytorchvideo sets decord's torch bridge when first imported, but decord keeps its
        # bridge per thread, and this may run on any tokenizer or inference thread.
        import decord

        decord.bridge.set_bridge("torch")
        try:
            video = select_video_class("decord")(io.BytesIO(data), f"input {row}", False)
            sampler = ConstantClipsPerVideoSampler(
                clip_duration=duration, clips_per_video=args["clips_per_video"]
            )
            clips = [
                video.get_clip(start, end)
                for start, end in data_module.get_clip_timepoints(sampler, video.duration)
            ]
        except Exception as exc:  # decord raises its own DECORDError, RuntimeError and more
            raise InvalidArgument(f"input {row} is not a readable video: {exc}") from exc
        if any(clip is None or clip.get("video") is None for clip in clips):
            raise InvalidArgument(f"input {row}: no frames found in a clip of the video")
        subsample = pv_transforms.UniformTemporalSubsample(num_samples=duration)
        scale = pv_transforms.ShortSideScale(_CROP)
        normalize = data_module.NormalizeVideo(mean=_CLIP_MEAN, std=_CLIP_STD)
        frames = [normalize(scale(subsample(clip["video"]) / 255.0)) for clip in clips]
        return torch.stack(data_module.SpatialCrop(_CROP, num_crops=3)(frames))

    def _audio(self, data: bytes, row: int) -> Any:
        """imagebind's audio loader, step by step: its own ``torchaudio.load`` needs torchcodec
        and a system FFmpeg, so the bytes are decoded by PyAV (any container and codec FFmpeg
        reads); then resampled, cut in clips and turned into mel filterbanks as the package
        does, with its own functions and constants."""
        import torch
        import torchaudio
        from pytorchvideo.data.clip_sampling import ConstantClipsPerVideoSampler
        from torchvision import transforms

        args = self.audio_args
        waveform, rate = decode_audio(data, row)
        if rate != args["sample_rate"]:
            waveform = torchaudio.functional.resample(
                waveform, orig_freq=rate, new_freq=args["sample_rate"]
            )
        sampler = ConstantClipsPerVideoSampler(
            clip_duration=args["clip_duration"], clips_per_video=args["clips_per_video"]
        )
        normalize = transforms.Normalize(mean=args["mean"], std=args["std"])
        clips = []
        for start, end in self.data.get_clip_timepoints(
            sampler, waveform.size(1) / args["sample_rate"]
        ):
            clip = waveform[:, int(start * args["sample_rate"]) : int(end * args["sample_rate"])]
            mel = self.data.waveform2melspec(
                clip, args["sample_rate"], args["num_mel_bins"], args["target_length"]
            )
            clips.append(normalize(mel))
        return torch.stack(clips)


def modality_of(data: bytes, mime: str, row: int) -> str:
    """``image``, ``audio`` or ``video``, by the blob's MIME type; for one with none (or
    ``application/octet-stream``), by what the bytes turn out to be."""
    major = mime.partition("/")[0].strip().lower()
    if major in ("image", "audio", "video"):
        return major
    if major and mime.strip().lower() != "application/octet-stream":
        raise InvalidArgument(
            f"input {row}: imagebind embeds image/*, audio/* and video/* blobs, not {mime!r}"
        )
    from PIL import Image, UnidentifiedImageError

    try:
        Image.open(io.BytesIO(data)).verify()
        return "image"
    except (UnidentifiedImageError, OSError, SyntaxError):
        pass
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            if container.streams.video:
                return "video"
            if container.streams.audio:
                return "audio"
    except (av.error.FFmpegError, ValueError):  # type: ignore[attr-defined]
        pass
    raise InvalidArgument(
        f"input {row} is no image, audio or video this server can read; give it a MIME type"
    )


def decode_audio(data: bytes, row: int) -> tuple[Any, int]:
    """(waveform, sample rate): float samples in [-1, 1], channels first, as torchaudio.load
    gives them."""
    import av
    import torch

    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.audio:
                raise InvalidArgument(f"input {row} has no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=stream.rate)
            chunks = [
                out.to_ndarray()
                for frame in container.decode(stream)
                for out in resampler.resample(frame)
            ]
            chunks += [out.to_ndarray() for out in resampler.resample(None)]
            rate = int(stream.rate)
    except (av.error.FFmpegError, ValueError) as exc:  # type: ignore[attr-defined]
        raise InvalidArgument(f"input {row} is not readable audio: {exc}") from exc
    if not chunks:
        raise InvalidArgument(f"input {row} holds no audio samples")
    return torch.from_numpy(np.concatenate(chunks, axis=1).astype(np.float32)), rate


class _as_file:
    """A temporary file holding ``data``, for imagebind's loaders that take paths only."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __enter__(self) -> str:
        fd, self.path = tempfile.mkstemp(prefix="imagebind-")
        with os.fdopen(fd, "wb") as f:
            f.write(self.data)
        return self.path

    def __exit__(self, *exc: object) -> None:
        os.unlink(self.path)
