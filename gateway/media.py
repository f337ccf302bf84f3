"""Media that a string names: the files and URLs a multimodal function's string column holds.

LanceDB's ``open-clip`` and ``imagebind`` functions take a ``str`` source column of image and
audio paths or URLs (``image_uri: str = func.SourceField()``) and read each one. The gateway
does the same for a function that embeds more than text, within limits its operator sets:

- a local path, or a ``file://`` URI, is read only if, symlinks and ``..`` resolved, it lies
  under ``--media-roots`` (none by default: a deployed gateway reads no local files unless
  told to). A relative path is taken from the gateway's working directory.
- an ``http(s)`` URL is fetched only from a host in ``--media-hosts`` (``*`` for any), each
  redirect checked again, within ``--media-timeout-s`` and ``--media-max-bytes``.

Embedded mode (``connect("./dir")``) runs the gateway in the caller's own process, so there it
reads any path and any host, as LanceDB does. A string is a reference when it is an
``http(s)://`` or ``file://`` URI, or ends in a media file extension (LanceDB's rule for
imagebind); any other string is text. The embedder then tells images, audio and video apart by
their bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from embedsearch.contract.errors import InvalidArgument, PermissionDenied, Unavailable
from embedsearch.contract.text import brief
from service_kit.paths import real_path_within

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".aac", ".m4a")
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm")
MEDIA_EXTENSIONS = IMAGE_EXTENSIONS + AUDIO_EXTENSIONS + VIDEO_EXTENSIONS
URL_SCHEMES = ("http://", "https://")
MAX_REFERENCE = 4096  # characters: longer is text, not a path or a URL
MAX_REDIRECTS = 5
READS_IN_FLIGHT = 8  # files or URLs read at once for one request


def is_reference(value: object) -> bool:
    """Whether ``value`` names media to read rather than being text to embed.

    >>> [is_reference(v) for v in ("cat.JPG", "https://x/y", "file:///a", "a cat", "a\\nb.png")]
    [True, True, True, False, False]
    """
    if not isinstance(value, str) or len(value) > MAX_REFERENCE or "\n" in value:
        return False
    lowered = value.lower()
    return lowered.startswith((*URL_SCHEMES, "file://")) or lowered.endswith(MEDIA_EXTENSIONS)


@dataclass(frozen=True)
class MediaReader:
    """Reads the media references among a function's inputs, within the operator's limits."""

    roots: tuple[str, ...]  # real paths
    hosts: frozenset[str]  # lower-case host names; "*" is any
    max_bytes: int
    timeout_s: float

    async def resolve(self, inputs: Sequence[str | bytes]) -> list[str | bytes]:
        """``inputs`` with each reference replaced by the bytes it names; text and bytes kept."""
        slots = asyncio.Semaphore(READS_IN_FLIGHT)
        async with contextlib.AsyncExitStack() as stack:
            # An HTTP client only where some reference is a URL; files need none.
            urls = any(is_reference(v) and _is_url(str(v)) for v in inputs)
            client = (
                await stack.enter_async_context(
                    httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False)
                )
                if urls
                else None
            )

            async def one(value: str | bytes) -> str | bytes:
                if not is_reference(value):
                    return value
                async with slots:
                    return await self.read(str(value), client)

            return list(await asyncio.gather(*(one(value) for value in inputs)))

    async def read(self, reference: str, client: httpx.AsyncClient | None) -> bytes:
        if _is_url(reference):
            assert client is not None  # resolve() opens one whenever a URL is among the inputs
            return await self._fetch(reference, client)
        return await asyncio.to_thread(self._read_file, reference)

    def _read_file(self, reference: str) -> bytes:
        path = reference
        if reference.lower().startswith("file://"):
            parsed = urllib.parse.urlparse(reference)
            if parsed.netloc not in ("", "localhost"):
                raise InvalidArgument(
                    f"{brief(reference)} names a file on another host: give a local path"
                )
            path = urllib.request.url2pathname(parsed.path)
        real = real_path_within(os.path.abspath(path), self.roots)
        if real is None:
            # The same answer whether or not the file exists: no probing the gateway's disk.
            raise PermissionDenied(
                f"{brief(reference)} is a local path, and this gateway reads media files only "
                "under the directories its operator lists in --media-roots "
                "(GATEWAY_MEDIA_ROOTS): put the file there, or send its bytes in a binary column"
            )
        try:
            with open(real, "rb") as file:
                if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                    raise InvalidArgument(f"{brief(reference)} is not a regular file")
                data = file.read(self.max_bytes + 1)
        except FileNotFoundError:
            raise InvalidArgument(f"no file {brief(reference)}") from None
        except (IsADirectoryError, PermissionError, OSError) as exc:
            raise InvalidArgument(f"cannot read {brief(reference)}: {exc.strerror}") from None
        return self._checked(reference, data)

    async def _fetch(self, url: str, client: httpx.AsyncClient) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            self._check_host(url)
            try:
                async with client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urllib.parse.urljoin(url, response.headers["location"])
                        continue
                    _check_status(url, response.status_code)
                    data = bytearray()
                    async for chunk in response.aiter_bytes():
                        data += chunk
                        if len(data) > self.max_bytes:
                            break
                    return self._checked(url, bytes(data))
            except httpx.HTTPError as exc:
                raise Unavailable(
                    f"could not fetch {brief(url)}: {type(exc).__name__} {exc}".rstrip()
                ) from None
        raise InvalidArgument(f"{brief(url)} redirects more than {MAX_REDIRECTS} times")

    def _check_host(self, url: str) -> None:
        host = (urllib.parse.urlparse(url).hostname or "").lower()
        if "*" in self.hosts or host in self.hosts:
            return
        raise PermissionDenied(
            f"{brief(url)} is on host {brief(host)}, and this gateway fetches media only from "
            "the hosts its operator lists in --media-hosts (GATEWAY_MEDIA_HOSTS): send the "
            "bytes in a binary column instead"
        )

    def _checked(self, reference: str, data: bytes) -> bytes:
        if len(data) > self.max_bytes:
            raise InvalidArgument(
                f"{brief(reference)} is over the limit of {self.max_bytes} bytes "
                "(--media-max-bytes): send a smaller file"
            )
        if not data:
            raise InvalidArgument(f"{brief(reference)} is empty")
        return data


def _is_url(reference: str) -> bool:
    return reference.lower().startswith(URL_SCHEMES)


def _check_status(url: str, status: int) -> None:
    if status == 200:
        return
    if status >= 500 or status == 429:
        raise Unavailable(f"{brief(url)} answered HTTP {status}: try again later")
    raise InvalidArgument(f"{brief(url)} answered HTTP {status}")
