"""The gateway's reader of media references (gateway/media.py): local files under
--media-roots, http(s) URLs from --media-hosts, against real files and a real HTTP server on
loopback. What a multimodal table does with them is in test_imagebind_tables.py."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import QuietFiles, serving_directory

import embedsearch
from embedsearch.contract.errors import InvalidArgument, PermissionDenied, Unavailable
from embedsearch.embeddings import EmbeddingFunctionConfig, get_registry
from gateway.media import MediaReader, is_reference
from gateway.settings import GatewaySettings


class Handler(QuietFiles):
    """Serves the test's directory; /hop/N redirects N times, /away redirects off-host."""

    def do_GET(self) -> None:
        if self.path.startswith("/hop/"):
            left = int(self.path.rsplit("/", 1)[1])
            target = "/a.png" if left == 0 else f"/hop/{left - 1}"
            return self._redirect(target)
        if self.path == "/away":
            return self._redirect("http://localhost:1/a.png")
        if self.path == "/busy":
            self.send_error(503)
            return None
        return super().do_GET()

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.end_headers()


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media")
    (root / "a.png").write_bytes(b"\x89PNG first")
    (root / "big.wav").write_bytes(b"R" * 2048)
    (root / "empty.png").write_bytes(b"")
    (root / "sub").mkdir()
    (root / "sub" / "b.jpg").write_bytes(b"\xff\xd8 second")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.png").write_bytes(b"not yours")
    (root / "escape.png").symlink_to(outside / "secret.png")
    return root


@pytest.fixture(scope="module")
def server(media: Path) -> Iterator[str]:
    with serving_directory(media, Handler) as url:
        yield url


def reader(media: Path, hosts: str = "127.0.0.1", max_bytes: int = 1024) -> MediaReader:
    return GatewaySettings(
        embedder_addr="x:1",
        store_addr="x:2",
        media_roots=f"{media}, /nonexistent-root",
        media_hosts=hosts,
        media_max_bytes=max_bytes,
        media_timeout_s=5,
    ).media_reader()


def resolve(reader: MediaReader, *values: str | bytes) -> list[str | bytes]:
    return asyncio.run(reader.resolve(list(values)))


def test_what_counts_as_a_reference() -> None:
    assert is_reference("photos/Cat.JPEG") and is_reference("clip.mp4")
    assert is_reference("https://example.com/image") and is_reference("file:///a/b")
    assert not is_reference("a photo of a cat") and not is_reference("ftp://x/y.txt")
    assert not is_reference("two lines\nend.png") and not is_reference(b"a.png")
    assert not is_reference("x" * 5000 + ".png")


def test_files_under_the_roots_are_read_text_and_bytes_kept(media: Path) -> None:
    got = resolve(
        reader(media),
        str(media / "a.png"),
        f"file://{media / 'sub' / 'b.jpg'}",
        str(media / "sub" / ".." / "a.png"),
        "a cat on a mat",
        b"raw bytes",
    )
    assert got == [
        b"\x89PNG first",
        b"\xff\xd8 second",
        b"\x89PNG first",
        "a cat on a mat",
        b"raw bytes",
    ]


def test_a_relative_path_is_taken_from_the_working_directory(media: Path, monkeypatch) -> None:
    monkeypatch.chdir(media / "sub")
    assert resolve(reader(media), "b.jpg", "../a.png") == [b"\xff\xd8 second", b"\x89PNG first"]


@pytest.mark.parametrize(
    "name", ["escape.png", "../outside0/secret.png", "/etc/passwd.png", "/nonexistent-root.png"]
)
def test_paths_outside_the_roots_are_refused_alike(media: Path, name: str) -> None:
    """A symlink out, a ``..`` out, an absolute path elsewhere: one answer, naming the flag
    and not saying whether the file exists."""
    with pytest.raises(PermissionDenied, match="--media-roots") as refused:
        resolve(reader(media), str(media / name) if not name.startswith("/") else name)
    assert "no file" not in str(refused.value)


def test_no_roots_reads_no_files(media: Path) -> None:
    settings = GatewaySettings(embedder_addr="x:1", store_addr="x:2")
    with pytest.raises(PermissionDenied, match="GATEWAY_MEDIA_ROOTS"):
        resolve(settings.media_reader(), str(media / "a.png"))
    with pytest.raises(PermissionDenied, match="--media-hosts"):
        resolve(settings.media_reader(), "http://127.0.0.1:1/a.png")


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        ("missing.png", InvalidArgument, "no file"),
        ("big.wav", InvalidArgument, "--media-max-bytes"),
        ("empty.png", InvalidArgument, "is empty"),
    ],
)
def test_unreadable_files_under_the_roots_say_why(media: Path, name, error, match) -> None:
    with pytest.raises(error, match=match):
        resolve(reader(media), str(media / name))


def test_a_directory_or_device_is_not_media(media: Path) -> None:
    os.makedirs(media / "dir.png", exist_ok=True)
    with pytest.raises(InvalidArgument, match=r"regular file|Is a directory"):
        resolve(reader(media), str(media / "dir.png"))


def test_urls_on_allowed_hosts_are_fetched_through_redirects(media: Path, server: str) -> None:
    got = resolve(reader(media), f"{server}/a.png", f"{server}/hop/2", f"{server}/sub/b.jpg")
    assert got == [b"\x89PNG first", b"\x89PNG first", b"\xff\xd8 second"]


def test_url_refusals(media: Path, server: str) -> None:
    port = server.rsplit(":", 1)[1]
    with pytest.raises(PermissionDenied, match="localhost"):
        resolve(reader(media), f"http://localhost:{port}/a.png")  # not on the list
    with pytest.raises(PermissionDenied, match="--media-hosts"):
        resolve(reader(media), f"{server}/away")  # a redirect is checked again
    with pytest.raises(InvalidArgument, match="redirects more than"):
        resolve(reader(media), f"{server}/hop/9")
    with pytest.raises(InvalidArgument, match="HTTP 404"):
        resolve(reader(media), f"{server}/missing.png")
    with pytest.raises(Unavailable, match="HTTP 503"):
        resolve(reader(media), f"{server}/busy")
    with pytest.raises(InvalidArgument, match="--media-max-bytes"):
        resolve(reader(media), f"{server}/big.wav")
    with pytest.raises(Unavailable, match="could not fetch"):
        resolve(reader(media, hosts="*"), "http://127.0.0.1:1/a.png")  # nothing listens
    assert resolve(reader(media, hosts="*"), f"{server}/a.png") == [b"\x89PNG first"]


def test_a_text_function_embeds_a_file_name_as_text(stack) -> None:
    """Only a function that embeds more than text reads references: for sentence-transformers
    ``cat.png`` is text, and no file or URL is looked for."""
    db = embedsearch.connect(f"grpc://{stack.gateway}")
    func = get_registry().get("sentence-transformers").create()
    names = ["cat.png", "https://127.0.0.1:1/dog.jpg"]
    table = db.create_table(
        "media_names_are_text",
        data=[{"text": name} for name in names],
        embedding_functions=[
            EmbeddingFunctionConfig(source_column="text", vector_column="vector", function=func)
        ],
    )
    stored = np.array(table.to_pandas()["vector"].tolist())
    np.testing.assert_allclose(stored, np.array(func.compute_source_embeddings(names)), atol=1e-5)
