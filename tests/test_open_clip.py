"""The open-clip provider, run by an embedder in the vision environment (make install-vision).

The weights are random (``pretrained=None``): nothing can be downloaded here. The test checks
the real loading and inference path: shapes, determinism, and one space for text and images.
"""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import free_port
from helpers import expect_code
from PIL import Image

from embedsearch.local import wait_until_serving
from embedsearch.rpc.convert import spec_to_pb
from embedsearch.v1 import common_pb2, embedder_pb2, embedder_pb2_grpc

ROOT = Path(__file__).parent.parent
VISION_PYTHON = Path(os.environ.get("VISION_PYTHON", ROOT / ".venv-vision" / "bin" / "python"))
SPEC = spec_to_pb("open-clip", {"name": "ViT-B-32", "pretrained": None, "device": "cpu"})

pytestmark = pytest.mark.slow


def png(seed: int, size: int = 48) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def clip_embedder():
    assert VISION_PYTHON.exists(), f"{VISION_PYTHON} is missing: run make install-vision"
    port = free_port()
    proc = subprocess.Popen(
        [
            str(VISION_PYTHON),
            "-m",
            "embedder_service",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            "-1",
            "--preload",
            "",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_serving(f"127.0.0.1:{port}", timeout=120)
        yield embedder_pb2_grpc.EmbedderStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def vectors(reply: embedder_pb2.EmbedResponse) -> np.ndarray:
    return np.frombuffer(reply.vectors, "<f4").reshape(reply.count, reply.ndims)


def test_text_and_images_share_one_space(clip_embedder):
    resolved = clip_embedder.ResolveFunction(embedder_pb2.ResolveFunctionRequest(function=SPEC))
    assert resolved.ndims == 512
    assert set(resolved.modalities) == {common_pb2.MODALITY_TEXT, common_pb2.MODALITY_IMAGE}

    texts = vectors(
        clip_embedder.Embed(
            embedder_pb2.EmbedRequest(function=SPEC, texts=["a red square", "a photo of a cat"])
        )
    )
    blobs = [embedder_pb2.Blob(data=png(i), mime_type="image/png") for i in range(3)]
    images = vectors(clip_embedder.Embed(embedder_pb2.EmbedRequest(function=SPEC, blobs=blobs)))
    query = vectors(
        clip_embedder.Embed(
            embedder_pb2.EmbedRequest(
                function=SPEC, blobs=blobs[:1], mode=common_pb2.EMBED_MODE_QUERY
            )
        )
    )

    assert texts.shape == (2, 512) and images.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(query[0], images[0], atol=1e-5)  # deterministic, either mode
    assert not np.allclose(images[0], images[1])
    similarity = texts @ images.T  # comparable: one space, one dimension
    assert similarity.shape == (2, 3) and np.isfinite(similarity).all()


def test_unreadable_image_names_the_input(clip_embedder):
    blobs = [
        embedder_pb2.Blob(data=png(1), mime_type="image/png"),
        embedder_pb2.Blob(data=b"not an image", mime_type="image/png"),
    ]
    expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: clip_embedder.Embed(embedder_pb2.EmbedRequest(function=SPEC, blobs=blobs)),
        "input 1",
        "not a readable image",
    )


def test_pretrained_tag_without_network_says_what_to_set(clip_embedder):
    spec = spec_to_pb("open-clip", {"device": "cpu"})  # the laion2b tag needs a download
    expect_code(
        grpc.StatusCode.FAILED_PRECONDITION,
        lambda: clip_embedder.Embed(embedder_pb2.EmbedRequest(function=spec, texts=["x"])),
        "set pretrained to a local checkpoint path",
    )
