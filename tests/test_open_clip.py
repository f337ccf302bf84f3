"""The open-clip provider, run by an embedder in the vision environment (make install-multimodal).

The weights are random (``pretrained=None``): nothing can be downloaded here. The test checks
the real loading and inference path: shapes, determinism, and one space for text and images.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pytest
from conftest import QUIET
from helpers import expect_code
from PIL import Image

import embedsearch
from embedsearch.contract.convert import spec_to_pb
from embedsearch.contract.wire import schema_to_ipc
from embedsearch.v1 import common_pb2, embedder_pb2, embedder_pb2_grpc, gateway_pb2
from gateway.server import create_server as create_gateway
from gateway.settings import GatewaySettings
from service_kit.launch import service_process
from store_service.server import create_server as create_store
from store_service.settings import StoreSettings

ROOT = Path(__file__).parent.parent
VISION_PYTHON = Path(os.environ.get("VISION_PYTHON", ROOT / ".venv-multimodal" / "bin" / "python"))
SPEC = spec_to_pb("open-clip", {"name": "ViT-B-32", "pretrained": None, "device": "cpu"})

pytestmark = pytest.mark.slow


def png(seed: int, size: int = 48) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def clip_embedder():
    assert VISION_PYTHON.exists(), f"{VISION_PYTHON} is missing: run make install-multimodal"
    with service_process(
        "embedder_service", "--preload", "", python=str(VISION_PYTHON), ready_timeout=120
    ) as (address, _):
        yield address


@pytest.fixture(scope="module")
def clip_stub(clip_embedder):
    return embedder_pb2_grpc.EmbedderStub(grpc.insecure_channel(clip_embedder))


def vectors(reply: embedder_pb2.EmbedResponse) -> np.ndarray:
    return np.frombuffer(reply.vectors, "<f4").reshape(reply.count, reply.ndims)


def test_text_and_images_share_one_space(clip_stub):
    resolved = clip_stub.ResolveFunction(embedder_pb2.ResolveFunctionRequest(function=SPEC))
    assert resolved.ndims == 512
    assert set(resolved.modalities) == {common_pb2.MODALITY_TEXT, common_pb2.MODALITY_IMAGE}

    texts = vectors(
        clip_stub.Embed(
            embedder_pb2.EmbedRequest(function=SPEC, texts=["a red square", "a photo of a cat"])
        )
    )
    blobs = [embedder_pb2.Blob(data=png(i), mime_type="image/png") for i in range(3)]
    images = vectors(clip_stub.Embed(embedder_pb2.EmbedRequest(function=SPEC, blobs=blobs)))
    query = vectors(
        clip_stub.Embed(
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


def test_unreadable_image_names_the_input(clip_stub):
    blobs = [
        embedder_pb2.Blob(data=png(1), mime_type="image/png"),
        embedder_pb2.Blob(data=b"not an image", mime_type="image/png"),
    ]
    expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: clip_stub.Embed(embedder_pb2.EmbedRequest(function=SPEC, blobs=blobs)),
        "input 1",
        "not a readable image",
    )


def test_pretrained_tag_without_network_says_what_to_set(clip_stub):
    spec = spec_to_pb("open-clip", {"device": "cpu"})  # the laion2b tag needs a download
    expect_code(
        grpc.StatusCode.FAILED_PRECONDITION,
        lambda: clip_stub.Embed(embedder_pb2.EmbedRequest(function=spec, texts=["x"])),
        "set pretrained to a local checkpoint path",
    )


def test_image_column_through_the_gateway(servers, clip_embedder, tmp_path):
    """A binary column bound to open-clip: images embedded on add, image and text queries."""
    store = servers.start(create_store, StoreSettings(data_root=str(tmp_path), **QUIET))
    gateway = servers.start(
        create_gateway, GatewaySettings(embedder_addr=clip_embedder, store_addr=store, **QUIET)
    )
    db = embedsearch.connect(f"grpc://{gateway}")
    args = {"name": "ViT-B-32", "pretrained": None, "device": "cpu"}
    binding = common_pb2.EmbeddingBinding(
        function=spec_to_pb("open-clip", args), source_column="image", vector_column="vector"
    )
    schema = pa.schema([pa.field("label", pa.string()), pa.field("image", pa.binary())])
    db.call(
        "CreateTable",
        gateway_pb2.CreateTableRequest(
            name="images", arrow_schema=schema_to_ipc(schema), bindings=[binding]
        ),
    )
    table = db.open_table("images")
    table.add([{"label": f"noise {i}", "image": png(i)} for i in range(4)])

    by_image = table.search(png(2)).limit(2).to_list()
    assert by_image[0]["label"] == "noise 2" and by_image[0]["_distance"] < 1e-4
    by_text = table.search("a noisy picture").limit(4).to_list()
    assert len(by_text) == 4 and len(by_text[0]["vector"]) == 512
    # LanceDB opens what the store wrote, rows and binding in its own metadata shape. (Its
    # registry would build the function from it, but LanceDB's open-clip takes no
    # pretrained=None: the random weights of this test.)
    import lancedb

    theirs = lancedb.connect(tmp_path).open_table("images")
    assert theirs.count_rows() == 4
    assert theirs.to_arrow()["label"].to_pylist() == [f"noise {i}" for i in range(4)]
    (entry,) = json.loads(theirs.schema.metadata[b"embedding_functions"])
    assert (entry["name"], entry["source_column"], entry["vector_column"]) == (
        "open-clip",
        "image",
        "vector",
    )
    assert entry["model"]["name"] == "ViT-B-32"
