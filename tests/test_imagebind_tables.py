"""Tables bound to imagebind, through the gateway and the SDK (issue 16, item 2).

An embedder run from the multimodal python (its --model-roots on the tiny random ImageBind of
``tests/imagebind_tiny.py``) serves a store and gateway in this process. A ``bytes`` column
holds images, audio and video: the column is binary, and each value's modality is what its
bytes are (the provider sniffs them; LanceDB's function tells them apart by file extension).
With random weights nothing is semantic: the cross-modal test checks consistency with the
provider's own vectors, not meaning.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import MULTIMODAL_PYTHON, QUIET
from helpers import serving_directory
from PIL import Image

import embedsearch
from embedsearch.contract.channels import wait_until_serving
from embedsearch.contract.convert import spec_to_pb
from embedsearch.embeddings import get_registry
from embedsearch.errors import InvalidArgument, PermissionDenied
from embedsearch.pydantic import LanceModel, Vector
from embedsearch.v1 import common_pb2, embedder_pb2, embedder_pb2_grpc
from gateway.server import create_server as create_gateway
from gateway.settings import GatewaySettings
from service_kit.cli import running
from store_service.server import create_server as create_store
from store_service.settings import StoreSettings

pytestmark = pytest.mark.slow

#: The fixtures' rows in reference.npz (written by imagebind_tiny.py): three texts first.
REFERENCE = {"red.png": 3, "blue.png": 4, "tone-440.wav": 5, "tone-880.wav": 6, "colours.mp4": 7}
MEDIA = list(REFERENCE)


@pytest.fixture(scope="module")
def data_root(servers, imagebind_embedder, imagebind_dir, tmp_path_factory) -> tuple[str, Path]:
    """(a gateway's address, its store's data root): the table ``media`` is filled once. The
    gateway reads media files under the fixtures' directory and URLs from 127.0.0.1."""
    root = tmp_path_factory.mktemp("imagebind-tables")
    store = servers.start(
        create_store, StoreSettings(data_root=str(root), maintenance_interval_s=0, **QUIET)
    )
    gateway = servers.start(
        create_gateway,
        GatewaySettings(
            embedder_addr=imagebind_embedder,
            store_addr=store,
            media_roots=str(imagebind_dir),
            media_hosts="127.0.0.1",
            **QUIET,
        ),
    )
    wait_until_serving(gateway, timeout=120)
    return gateway, root


@pytest.fixture(scope="module")
def table(data_root, imagebind_dir):
    gateway, _ = data_root
    db = embedsearch.connect(f"grpc://{gateway}")
    func = (
        get_registry()
        .get("imagebind")
        .create(checkpoint_path=str(imagebind_dir / "tiny.pt"), device="cpu")
    )

    class Media(LanceModel):
        name: str
        media: bytes = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()  # type: ignore[valid-type]

    table = db.create_table("media", schema=Media)
    table.add([{"name": n, "media": (imagebind_dir / n).read_bytes()} for n in MEDIA])
    return table


def stored_vectors(table) -> dict[str, np.ndarray]:
    rows = table.to_arrow().to_pylist()
    return {row["name"]: np.asarray(row["vector"], dtype=np.float32) for row in rows}


def test_each_row_embeds_in_its_own_modality(table, imagebind_dir):
    """Images, audio and video in one binary column: each row's vector is the one the model
    gives that input in its modality (the reference the script computed in memory)."""
    assert table.schema.field("vector").type.list_size == 32
    reference = np.load(imagebind_dir / "reference.npz")["vectors"]
    vectors = stored_vectors(table)
    assert sorted(vectors) == sorted(MEDIA)
    for name, row in REFERENCE.items():
        # One batch per modality here, other compositions in the script: last bits differ.
        np.testing.assert_allclose(vectors[name], reference[row], rtol=1e-5, atol=1e-5)


def test_queries_embed_in_the_modality_they_are(table, imagebind_dir):
    """A PIL image, audio bytes and video bytes each find the row they came from."""
    red = Image.open(io.BytesIO((imagebind_dir / "red.png").read_bytes()))
    for query, expected in [
        (red, "red.png"),
        ((imagebind_dir / "tone-880.wav").read_bytes(), "tone-880.wav"),
        ((imagebind_dir / "tone-440.flac").read_bytes(), "tone-440.wav"),  # same samples
        ((imagebind_dir / "colours.mp4").read_bytes(), "colours.mp4"),
    ]:
        found = table.search(query).limit(2).to_list()
        assert found[0]["name"] == expected
        nearest = np.asarray(found[0]["vector"])
        assert found[0]["_distance"] < 1e-6 * float(nearest @ nearest)  # itself


def test_a_text_query_searches_audio_rows(table, imagebind_embedder, imagebind_dir):
    """Cross-modal: a text query over audio (and other) rows ranks them by their distance to
    the text's vector as the provider computes it."""
    stub = embedder_pb2_grpc.EmbedderStub(grpc.insecure_channel(imagebind_embedder))
    function = spec_to_pb(
        "imagebind", {"checkpoint_path": str(imagebind_dir / "tiny.pt"), "device": "cpu"}
    )
    reply = stub.Embed(
        embedder_pb2.EmbedRequest(
            function=function, texts=["a low hum"], mode=common_pb2.EMBED_MODE_QUERY
        )
    )
    query = np.frombuffer(reply.vectors, "<f4")
    vectors = stored_vectors(table)
    audio = [n for n in MEDIA if n.endswith(".wav")]
    distances = {n: float(np.sum((vectors[n] - query) ** 2)) for n in audio}

    found = table.search("a low hum").where("name LIKE '%.wav'", prefilter=True).to_list()
    assert [row["name"] for row in found] == sorted(audio, key=distances.get)
    np.testing.assert_allclose(
        [row["_distance"] for row in found], sorted(distances.values()), rtol=1e-4
    )
    everything = table.search("a low hum").limit(len(MEDIA)).to_list()
    assert len(everything) == len(MEDIA)


@pytest.fixture(scope="module")
def fixtures_url(imagebind_dir):
    with serving_directory(imagebind_dir) as url:
        yield url


def test_a_string_column_names_files_and_urls(table, data_root, imagebind_dir, fixtures_url):
    """LanceDB's ``uri: str = func.SourceField()``: a path, a file:// URI or a URL is read
    (within the gateway's --media-roots and --media-hosts) and embedded in its modality, the
    same vector as its bytes; a string that names nothing is text."""
    func = table.embedding_functions["vector"].function

    class Named(LanceModel):
        uri: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()  # type: ignore[valid-type]

    uris = {
        "red.png": str(imagebind_dir / "red.png"),
        "blue.png": (imagebind_dir / "blue.png").as_uri(),
        "tone-440.wav": f"{fixtures_url}/tone-440.wav",
        "colours.mp4": f"{fixtures_url}/colours.mp4",
    }
    db = embedsearch.connect(f"grpc://{data_root[0]}")
    named = db.create_table("named", schema=Named)
    named.add([{"uri": uri} for uri in [*uris.values(), "a low hum"]])
    by_bytes = stored_vectors(table)
    rows = {row["uri"]: np.asarray(row["vector"]) for row in named.to_arrow().to_pylist()}
    for name, uri in uris.items():
        np.testing.assert_allclose(rows[uri], by_bytes[name], rtol=1e-5, atol=1e-5)
    text = func.compute_source_embeddings(["a low hum"])[0]
    np.testing.assert_allclose(rows["a low hum"], text, rtol=1e-5, atol=1e-5)

    found = table.search(f"{fixtures_url}/tone-880.wav").limit(1).to_list()
    assert found[0]["name"] == "tone-880.wav"
    found = table.search(str(imagebind_dir / "blue.png")).limit(1).to_list()
    assert found[0]["name"] == "blue.png"


@pytest.mark.parametrize(
    ("uri", "error"),
    [
        ("/etc/hosts.png", PermissionDenied),  # outside --media-roots
        ("http://localhost:1/red.png", PermissionDenied),  # not on --media-hosts
        ("{dir}/missing.png", InvalidArgument),
        ("{url}/missing.wav", InvalidArgument),
    ],
)
def test_a_reference_that_cannot_be_read_fails_the_add(
    table, data_root, imagebind_dir, fixtures_url, uri, error
):
    """One unreadable reference fails the whole add with the reason, and writes nothing."""
    func = table.embedding_functions["vector"].function

    class Named(LanceModel):
        uri: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()  # type: ignore[valid-type]

    db = embedsearch.connect(f"grpc://{data_root[0]}")
    named = db.create_table("refused", schema=Named, mode="overwrite")
    good = str(imagebind_dir / "red.png")
    bad = uri.format(dir=imagebind_dir, url=fixtures_url)
    with pytest.raises(error):
        named.add([{"uri": good}, {"uri": bad}])
    assert named.count_rows() == 0


def test_lancedb_opens_the_table_and_sees_the_binding(table, data_root):
    import lancedb

    theirs = lancedb.connect(data_root[1]).open_table("media")
    assert theirs.count_rows() == len(MEDIA)
    assert theirs.schema.field("media").type == table.schema.field("media").type
    (entry,) = json.loads(theirs.schema.metadata[b"embedding_functions"])
    assert entry["name"] == "imagebind"
    assert (entry["source_column"], entry["vector_column"]) == ("media", "vector")
    assert entry["model"]["checkpoint_path"].endswith("tiny.pt")
    assert (entry["model"]["name"], entry["model"]["device"]) == ("imagebind_huge", "cpu")
    rows = theirs.to_arrow().to_pylist()
    assert {row["name"] for row in rows} == set(MEDIA)
    # LanceDB's own registry reads the entry as its imagebind function (which knows no
    # checkpoint_path: LanceDB downloads the weights), without loading a model.
    config = theirs.embedding_functions["vector"]
    assert config.source_column == "media"
    assert type(config.function).__name__ == "ImageBindEmbeddings"
    assert (config.function.name, config.function.device) == ("imagebind_huge", "cpu")


def test_image_and_audio_columns_through_embedsearch_up(imagebind_dir, tmp_path):
    """The whole stack as a deployment runs it (``embedsearch up``, the embedder from the
    multimodal python): a table with an image column and an audio column, each bound to
    imagebind, searched by text, by image and by audio; LanceDB opens what it wrote."""
    import lancedb

    data = tmp_path / "data"
    env = {"EMBEDDER_MODEL_ROOTS": str(imagebind_dir), "EMBEDDER_PRELOAD": ""}
    with running(str(data), embedder_python=MULTIMODAL_PYTHON, env=env) as gateway:
        db = embedsearch.connect(f"grpc://{gateway}")
        registry = get_registry().get("imagebind")
        checkpoint = str(imagebind_dir / "tiny.pt")
        images = registry.create(checkpoint_path=checkpoint, device="cpu")
        sounds = registry.create(checkpoint_path=checkpoint, device="cpu")

        class Clips(LanceModel):
            name: str
            image: bytes = images.SourceField()
            audio: bytes = sounds.SourceField()
            image_vector: Vector(images.ndims()) = images.VectorField()  # type: ignore[valid-type]
            audio_vector: Vector(sounds.ndims()) = sounds.VectorField()  # type: ignore[valid-type]

        table = db.create_table("clips", schema=Clips)
        clips = [("red", "red.png", "tone-440.wav"), ("blue", "blue.png", "tone-880.wav")]
        table.add(
            [
                {
                    "name": name,
                    "image": (imagebind_dir / image).read_bytes(),
                    "audio": (imagebind_dir / audio).read_bytes(),
                }
                for name, image, audio in clips
            ]
        )
        red = Image.open(io.BytesIO((imagebind_dir / "red.png").read_bytes()))
        by_image = table.search(red, vector_column_name="image_vector").limit(1).to_list()
        hum = (imagebind_dir / "tone-880.wav").read_bytes()
        by_audio = table.search(hum, vector_column_name="audio_vector").limit(1).to_list()
        by_text = table.search("a low hum", vector_column_name="audio_vector").to_list()
        assert by_image[0]["name"] == "red" and by_audio[0]["name"] == "blue"
        assert {row["name"] for row in by_text} == {"red", "blue"}
        assert by_text[0]["_distance"] <= by_text[1]["_distance"]

    theirs = lancedb.connect(data).open_table("clips")
    assert theirs.count_rows() == 2
    bound = {v: c.source_column for v, c in theirs.embedding_functions.items()}
    assert bound == {"image_vector": "image", "audio_vector": "audio"}
