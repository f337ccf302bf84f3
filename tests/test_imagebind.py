"""The imagebind provider, run by an embedder in the multimodal environment.

That environment (torch 2.9.1 with torchvision and torchaudio, imagebind-unofficial, PyAV,
decord) is named by ``MULTIMODAL_PYTHON``; without it these tests fail, naming the install
step. The model is a tiny ImageBindModel with random weights, built by
``tests/imagebind_tiny.py`` from the package's own constructor, together with the fixtures (two
images, two tones, a video of colours) and the vectors of the model before its checkpoint was
written; conftest's ``imagebind_dir`` and ``imagebind_embedder`` build it and serve it once per
session, for this file and tests/test_imagebind_tables.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import expect_code

from embedsearch.contract.convert import spec_to_pb
from embedsearch.v1 import common_pb2, embedder_pb2, embedder_pb2_grpc

TEXTS = ["a red square", "a low hum", "a video of colours"]
MIME = {"png": "image/png", "wav": "audio/wav", "flac": "audio/flac", "mp4": "video/mp4"}
IMAGES, AUDIO, VIDEO = ["red.png", "blue.png"], ["tone-440.wav", "tone-880.wav"], ["colours.mp4"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(imagebind_dir) -> Path:
    """A directory holding tiny.pt, the fixtures and reference.npz (see the script)."""
    return imagebind_dir


@pytest.fixture(scope="module")
def stub(imagebind_embedder):
    return embedder_pb2_grpc.EmbedderStub(grpc.insecure_channel(imagebind_embedder))


def spec(tiny: Path, **args):
    return spec_to_pb(
        "imagebind", {"checkpoint_path": str(tiny / "tiny.pt"), "device": "cpu", **args}
    )


def blobs(tiny: Path, names: list[str], mime: bool = True) -> list[embedder_pb2.Blob]:
    return [
        embedder_pb2.Blob(
            data=(tiny / name).read_bytes(), mime_type=MIME[name.rsplit(".", 1)[1]] if mime else ""
        )
        for name in names
    ]


def embed(stub, function, texts=(), items=(), mode=common_pb2.EMBED_MODE_SOURCE) -> np.ndarray:
    reply = stub.Embed(
        embedder_pb2.EmbedRequest(
            function=function, texts=list(texts), blobs=list(items), mode=mode
        )
    )
    return np.frombuffer(reply.vectors, "<f4").reshape(reply.count, reply.ndims)


def test_four_modalities_one_space(stub, tiny):
    function = spec(tiny)
    resolved = stub.ResolveFunction(embedder_pb2.ResolveFunctionRequest(function=function))
    assert resolved.ndims == 32
    assert set(resolved.modalities) == {
        common_pb2.MODALITY_TEXT,
        common_pb2.MODALITY_IMAGE,
        common_pb2.MODALITY_AUDIO,
        common_pb2.MODALITY_VIDEO,
    }
    texts = embed(stub, function, texts=TEXTS)
    images = embed(stub, function, items=blobs(tiny, IMAGES))
    audio = embed(stub, function, items=blobs(tiny, AUDIO))
    video = embed(stub, function, items=blobs(tiny, VIDEO))
    assert texts.shape == (3, 32) and images.shape == (2, 32)
    assert audio.shape == (2, 32) and video.shape == (1, 32)
    everything = np.concatenate([texts, images, audio, video])
    assert np.isfinite(everything).all()
    assert not np.allclose(images[0], images[1]) and not np.allclose(audio[0], audio[1])
    similarity = texts @ np.concatenate([images, audio, video]).T  # one space, one dimension
    assert similarity.shape == (3, 5) and np.isfinite(similarity).all()

    # The preprocessing the script ran in-process gave these shapes per input.
    shapes = json.loads((tiny / "manifest.json").read_text())["inputs"]
    assert shapes["a red square"] == [77]
    assert shapes["red.png"] == [3, 224, 224]
    assert shapes["tone-440.wav"] == [3, 1, 128, 204]  # 3 clips of 2 s, 128 mel bins
    assert shapes["colours.mp4"] == [15, 3, 2, 224, 224]  # 5 clips x 3 crops, 2 frames each

    # The checkpoint file reproduces the in-memory model's vectors exactly: the script ran
    # the same batches.
    reference = np.load(tiny / "reference.npz")["vectors"]
    np.testing.assert_array_equal(everything, reference[:8])


def test_deterministic_in_any_mode_and_batch(stub, tiny):
    function = spec(tiny)
    mixed = blobs(tiny, [VIDEO[0], AUDIO[1], IMAGES[0], AUDIO[0]])  # towers split per batch
    first = embed(stub, function, items=mixed)
    again = embed(stub, function, items=mixed, mode=common_pb2.EMBED_MODE_QUERY)
    np.testing.assert_array_equal(first, again)
    # Other batch compositions round differently in the last bits (CPU matmul blocking).
    reference = np.load(tiny / "reference.npz")["vectors"]
    np.testing.assert_allclose(first, reference[[7, 6, 3, 5]], rtol=1e-5, atol=1e-5)
    # A blob with no MIME type is recognised by its bytes.
    sniffed = embed(stub, function, items=blobs(tiny, [*IMAGES, *AUDIO, *VIDEO], mime=False))
    np.testing.assert_allclose(sniffed, reference[3:8], rtol=1e-5, atol=1e-5)


def test_audio_is_decoded_whatever_its_container(stub, tiny):
    """The same samples as WAV (PCM) and as FLAC (compressed) embed to the same vector."""
    wav, flac = embed(stub, spec(tiny), items=blobs(tiny, ["tone-440.wav", "tone-440.flac"]))
    np.testing.assert_allclose(wav, flac, rtol=1e-6, atol=1e-6)


def test_normalize_gives_unit_vectors_in_every_modality(stub, tiny):
    function = spec(tiny, normalize=True)
    vectors = np.concatenate(
        [
            embed(stub, function, texts=TEXTS[:1]),
            embed(stub, function, items=blobs(tiny, [IMAGES[0], AUDIO[0], VIDEO[0]])),
        ]
    )
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_without_checkpoint_says_what_to_set(stub):
    function = spec_to_pb("imagebind", {"device": "cpu"})
    expect_code(
        grpc.StatusCode.FAILED_PRECONDITION,
        lambda: embed(stub, function, texts=["x"]),
        "checkpoint_path",
    )


def test_unreadable_audio_names_the_input(stub, tiny):
    items = [*blobs(tiny, AUDIO[:1]), embedder_pb2.Blob(data=b"not audio", mime_type="audio/wav")]
    expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: embed(stub, spec(tiny), items=items),
        "input 1",
    )


def test_without_the_package_says_what_to_install(tmp_path):
    """In an environment without imagebind (the main one), the provider still registers and
    answers FAILED_PRECONDITION naming the extra to install."""
    pytest.importorskip("torch")
    try:
        import imagebind  # noqa: F401
    except Exception:  # absent, or its import fails here: either way the provider must say so
        pass
    else:
        pytest.skip("imagebind imports in this environment")
    from embedder_service.providers.imagebind import ImageBindEmbeddings
    from embedsearch.contract.errors import FailedPrecondition

    checkpoint = tmp_path / "imagebind_huge.pth"
    checkpoint.write_bytes(b"")
    with pytest.raises(FailedPrecondition, match=r"embedsearch\[imagebind\]"):
        ImageBindEmbeddings.create(checkpoint_path=str(checkpoint), device="cpu").ndims()
