"""Build a tiny random ImageBind, write its checkpoint, fixtures and reference vectors.

Runs in the multimodal environment (torch 2.9.1, torchaudio, imagebind-unofficial, av):

    $MULTIMODAL_PYTHON tests/imagebind_tiny.py OUT_DIR

OUT_DIR receives ``tiny.pt`` (a checkpoint the imagebind provider loads), the fixtures
``red.png``, ``blue.png``, ``tone-440.wav``, ``tone-880.wav``, ``colours.mp4`` and
``tone-440.flac`` (made here:
nothing is downloaded), and ``reference.npz``: the vectors of the in-memory model, before any
checkpoint was written, for the same inputs through the provider's own preprocessing.
"""

from __future__ import annotations

import io
import json
import sys
import wave
from pathlib import Path

import numpy as np

#: A reduced configuration of ImageBindModel: every tower one block of width 32, heads of 2;
#: the preprocessing shapes (224x224 images, 128x204 mel clips, 2-frame video) are the real ones.
TINY = {
    "out_embed_dim": 32,
    **{f"{m}_embed_dim": 32 for m in ("vision", "text", "audio")},
    **{f"{m}_embed_dim": 16 for m in ("depth", "thermal", "imu")},
    **{f"{m}_num_blocks": 1 for m in ("vision", "text", "audio", "depth", "thermal", "imu")},
    **{f"{m}_num_heads": 2 for m in ("vision", "text", "audio", "depth", "thermal", "imu")},
}
TEXTS = ["a red square", "a low hum", "a video of colours"]


def png(rgb: tuple[int, int, int], size: int = 64) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.zeros((size, size, 3), dtype=np.uint8) + np.array(rgb, dtype=np.uint8)
    pixels[size // 4 : size // 2, size // 4 : size // 2] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def tone_samples(hz: float, seconds: float = 3.0, rate: int = 22050) -> np.ndarray:
    """16-bit samples of a sine tone, at a rate the provider must resample to 16 kHz."""
    return (12000 * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)).astype(np.int16)


def tone(hz: float, rate: int = 22050) -> bytes:
    """A mono 16-bit WAV of a sine tone, written by the standard library's wave module."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(tone_samples(hz, rate=rate).astype("<i2").tobytes())
    return buffer.getvalue()


def tone_flac(hz: float, rate: int = 22050) -> bytes:
    """The same tone as :func:`tone`, losslessly compressed to FLAC by PyAV."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            tone_samples(hz, rate=rate)[None, :], format="s16", layout="mono"
        )
        frame.rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buffer.getvalue()


def video(seconds: float = 3.0, fps: int = 8, size: tuple[int, int] = (96, 64)) -> bytes:
    """An MP4 (MPEG-4 part 2) of frames that turn from red to green to blue."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        frames = int(seconds * fps)
        for i in range(frames):
            phase = i / max(frames - 1, 1)
            rgb = np.array([255 * (1 - phase), 255 * (1 - abs(2 * phase - 1)), 255 * phase])
            pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8) + rgb.astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def fixtures() -> dict[str, tuple[bytes, str]]:
    return {
        "red.png": (png((220, 30, 30)), "image/png"),
        "blue.png": (png((30, 30, 220)), "image/png"),
        "tone-440.wav": (tone(440), "audio/wav"),
        "tone-880.wav": (tone(880), "audio/wav"),
        "colours.mp4": (video(), "video/mp4"),
        "tone-440.flac": (tone_flac(440), "audio/flac"),
    }


def main(out: Path) -> None:
    import torch

    from embedder_service.providers.imagebind import (
        ImageBindRunner,
        _import_imagebind,
        save_checkpoint,
    )

    out.mkdir(parents=True, exist_ok=True)
    _, imagebind_model = _import_imagebind()
    torch.manual_seed(0)
    model = imagebind_model.ImageBindModel(**TINY).eval()
    blobs = fixtures()
    for name, (data, _) in blobs.items():
        (out / name).write_bytes(data)
    runner = ImageBindRunner(model, "cpu", normalize=False)
    inputs = [*TEXTS, *blobs.values()]
    prepared = runner.prepare("source", inputs)
    # One forward pass per request the test sends (texts, images, WAVs, video, FLAC): CPU
    # kernels round the last bits differently for other batch sizes.
    groups = [(0, 3), (3, 5), (5, 7), (7, 8), (8, 9)]
    vectors = np.concatenate(
        [runner.run("source", [payload for payload, _ in prepared[a:b]]) for a, b in groups]
    )
    shapes = {
        name: list(payload[1].shape)
        for name, (payload, _) in zip([*TEXTS, *blobs], prepared, strict=True)
    }
    np.savez(out / "reference.npz", vectors=vectors, names=np.array([*TEXTS, *blobs]))
    save_checkpoint(model, TINY, str(out / "tiny.pt"))
    (out / "manifest.json").write_text(
        json.dumps({"inputs": shapes, "costs": [cost for _, cost in prepared], "config": TINY})
    )
    print(json.dumps({"ndims": int(vectors.shape[1]), "inputs": shapes}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
