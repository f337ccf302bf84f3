"""Issue 15, parts 1 and 2: the registry API and client-side functions, as in LanceDB.

Cases run on LanceDB itself and on our SDK (embedded and over gRPC) and compare."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lancedb.embeddings as lance_embeddings
import numpy as np
import pytest
from lancedb.pydantic import LanceModel as LanceLanceModel
from lancedb.pydantic import Vector as LanceVector

import embedsearch
from embedsearch.embeddings import (
    EmbeddingFunctionConfig,
    EmbeddingFunctionRegistry,
    TextEmbeddingFunction,
    get_registry,
)
from embedsearch.embeddings.utils import with_embeddings
from embedsearch.errors import FailedPrecondition
from embedsearch.pydantic import LanceModel, Vector

ROOT = Path(__file__).resolve().parent.parent


def sdk_of(db: Any) -> tuple[Any, Any, Any, Any]:
    """(registry, TextEmbeddingFunction, LanceModel, Vector) of LanceDB or of our SDK."""
    if isinstance(db, embedsearch.Connection):
        return get_registry(), TextEmbeddingFunction, LanceModel, Vector
    return (
        lance_embeddings.get_registry(),
        lance_embeddings.TextEmbeddingFunction,
        LanceLanceModel,
        LanceVector,
    )


def register_toy(db: Any, name: str, vectors: Callable[[str], Any], calls: list[str]) -> type:
    """A 2-dimensional client-side function registered under ``name`` in ``db``'s library;
    ``vectors(text)`` gives each row's vector (or raises), ``calls`` records each call."""
    registry, base, _, _ = sdk_of(db)

    class Toy(base):  # type: ignore[misc, valid-type]
        device: str = "cpu"
        api_key: str | None = None

        @staticmethod
        def sensitive_keys() -> list[str]:
            return ["api_key"]

        def ndims(self) -> int:
            return 2

        def generate_embeddings(self, texts: Any) -> list[Any]:
            calls.append(texts[0])
            return [vectors(text) for text in texts]

    Toy.__name__ = f"Toy_{name.replace('-', '_')}"
    return registry.register(name)(Toy)


def toy_schema(db: Any, func: Any) -> type:
    _, _, base_model, vector_type = sdk_of(db)

    class Words(base_model):  # type: ignore[misc, valid-type]
        text: str = func.SourceField()
        vector: vector_type(2) = func.VectorField()  # type: ignore[valid-type]

    return Words


def without_client_side(entry: dict[str, Any]) -> dict[str, Any]:
    """A metadata entry without our ``client_side`` flag (LanceDB's entries have none)."""
    return {k: v for k, v in entry.items() if k != "client_side"}


def length_vector(text: str) -> list[float]:
    return [float(len(text)), 1.0]


# -- registry API -------------------------------------------------------------------------------


def test_get_instance_is_the_registry_get_registry_returns(fresh_db, lance_db):
    for db in (fresh_db, lance_db):
        registry = sdk_of(db)[0]
        assert type(registry).get_instance() is registry
    assert EmbeddingFunctionRegistry.get_instance() is get_registry()


def test_unknown_provider_is_a_key_error_at_get(fresh_db, lance_db):
    for db in (fresh_db, lance_db):
        with pytest.raises(KeyError):
            sdk_of(db)[0].get("no-such-provider")


def test_registered_names_come_before_the_servers(fresh_db, lance_db):
    for db in (fresh_db, lance_db):
        cls = register_toy(db, "toy-first", length_vector, [])
        assert sdk_of(db)[0].get("toy-first") is cls


def test_set_var_resolves_in_create_and_the_reference_is_persisted(fresh_db, lance_db):
    """$var:name and $var:name:default are read at create(); the table keeps the reference."""
    stored = []
    for db in (fresh_db, lance_db):
        registry = sdk_of(db)[0]
        register_toy(db, "toy-vars", length_vector, [])
        registry.set_var("toy_device", "cuda:1")
        registry.set_var("toy_key", "sk-secret-value")
        func = registry.get("toy-vars").create(device="$var:toy_device", api_key="$var:toy_key")
        assert (func.device, func.api_key) == ("cuda:1", "sk-secret-value")
        defaulted = registry.get("toy-vars").create(device="$var:toy_unset:cpu:0")
        assert defaulted.device == "cpu:0"
        with pytest.raises(ValueError):
            registry.get("toy-vars").create(device="$var:toy_never_set")
        with pytest.raises(ValueError, match="Sensitive key 'api_key' cannot be set to a hard"):
            registry.get("toy-vars").create(api_key="sk-literal")  # a secret must be a $var:
        with pytest.raises(ValueError):
            registry.set_var("bad:name", "x")
        table = db.create_table("vars", schema=toy_schema(db, func))
        table.add([{"text": "abc"}])
        raw = table.schema.metadata[b"embedding_functions"]
        assert b"sk-secret-value" not in raw
        stored.append([without_client_side(entry) for entry in json.loads(raw)])
    ours, theirs = stored
    assert ours == theirs
    assert ours[0]["model"] == {"device": "$var:toy_device", "api_key": "$var:toy_key"}


def test_table_metadata_and_parse_functions_as_lancedb(fresh_db, lance_db):
    metadata, parsed = [], []
    for db in (fresh_db, lance_db):
        registry = sdk_of(db)[0]
        register_toy(db, "toy-meta", length_vector, [])
        conf_cls = (
            EmbeddingFunctionConfig
            if isinstance(db, embedsearch.Connection)
            else lance_embeddings.EmbeddingFunctionConfig
        )
        func = registry.get("toy-meta").create(device="cpu")
        conf = conf_cls(source_column="text", vector_column="vec", function=func)
        written = registry.get_table_metadata([conf])
        metadata.append(json.loads(written["embedding_functions"]))
        back = registry.parse_functions({b"embedding_functions": written["embedding_functions"]})
        parsed.append(
            {
                k: (c.source_column, type(c.function).__name__, c.function.device)
                for k, c in back.items()
            }
        )
        assert registry.get_table_metadata([]) is None
        assert registry.parse_functions(None) == {}
    assert metadata[0] == metadata[1]
    assert parsed[0] == parsed[1] == {"vec": ("text", "Toy_toy_meta", "cpu")}


def test_table_embedding_functions_are_configs(fresh_db, lance_db):
    found = []
    for db in (fresh_db, lance_db):
        register_toy(db, "toy-conf", length_vector, [])
        func = sdk_of(db)[0].get("toy-conf").create()
        table = db.create_table("conf", schema=toy_schema(db, func))
        functions = table.embedding_functions
        conf = functions["vector"]
        found.append(
            (
                list(functions),
                type(conf).__name__,
                conf.source_column,
                conf.vector_column,
                conf.function.ndims(),
            )
        )
        assert type(conf.function).__name__ == "Toy_toy_conf"
    assert found[0] == found[1]


def test_provider_functions_expose_their_arguments(fresh_db, lance_db, model_path):
    for db in (fresh_db, lance_db):
        registry, text_base, _, _ = sdk_of(db)
        func = registry.get("sentence-transformers").create(name=model_path, device="cpu")
        assert (func.name, func.device) == (model_path, "cpu")
        assert func.max_retries == 7
        assert isinstance(func, text_base)
        assert func.ndims() == 384
        with pytest.raises(AttributeError):
            _ = func.no_such_argument


def test_server_function_keeps_var_reference_in_the_table(fresh_db, lance_db, model_path):
    """A server-hosted function given $var: sends the value and stores the reference."""
    stored, best = [], []
    for db in (fresh_db, lance_db):
        registry, _, base_model, vector_type = sdk_of(db)
        registry.set_var("st_model", model_path)
        func = registry.get("sentence-transformers").create(name="$var:st_model")
        assert func.name == model_path
        assert func.safe_model_dump()["name"] == "$var:st_model"

        class Docs(base_model):  # type: ignore[misc, valid-type]
            text: str = func.SourceField()
            vector: vector_type(func.ndims()) = func.VectorField()  # type: ignore[valid-type]

        table = db.create_table("st_var", schema=Docs)
        table.add([{"text": "red apples"}, {"text": "blue skies"}])
        stored.append(json.loads(table.schema.metadata[b"embedding_functions"])[0]["model"])
        best.append(table.search("fruit").limit(1).to_list()[0]["text"])
    assert stored[0]["name"] == stored[1]["name"] == "$var:st_model"
    assert best == ["red apples", "red apples"]


# -- client-side functions: retries and bad vectors ---------------------------------------------


def flaky(failures: int, error: type[Exception]) -> Callable[[str], list[float]]:
    """A vector function that raises ``error`` on its first ``failures`` calls."""
    left = [failures]

    def vectors(text: str) -> list[float]:
        if left[0] > 0:
            left[0] -= 1
            raise error("temporarily down")
        return length_vector(text)

    return vectors


@pytest.fixture
def fast_backoff(monkeypatch):
    """Make backoff waits short through the functions' own settings."""
    from embedsearch.contract.functions import EmbeddingFunction

    monkeypatch.setattr(EmbeddingFunction, "retry_initial_delay_s", 0.001)
    monkeypatch.setattr(EmbeddingFunction, "retry_max_delay_s", 0.002)


def test_client_function_is_retried_until_it_succeeds(fresh_db, fast_backoff):
    calls: list[str] = []
    register_toy(fresh_db, "toy-flaky", flaky(3, ConnectionError), calls)
    func = get_registry().get("toy-flaky").create()
    table = fresh_db.create_table("flaky", schema=toy_schema(fresh_db, func))
    table.add([{"text": "abcd"}])
    assert len(calls) == 4  # three failures, then the call that worked
    assert table.to_arrow()["vector"].to_pylist() == [[4.0, 1.0]]


def test_retries_stop_at_max_retries(fresh_db, fast_backoff):
    calls: list[str] = []
    register_toy(fresh_db, "toy-down", flaky(100, TimeoutError), calls)
    func = get_registry().get("toy-down").create(max_retries=2)
    table = fresh_db.create_table("down", schema=toy_schema(fresh_db, func))
    with pytest.raises(TimeoutError):
        table.add([{"text": "abcd"}])
    assert len(calls) == 3
    assert table.count_rows() == 0


@pytest.mark.parametrize("error", [ValueError, TypeError, KeyError])
def test_errors_of_the_functions_own_making_are_not_retried(fresh_db, fast_backoff, error):
    calls: list[str] = []
    register_toy(fresh_db, "toy-broken", flaky(100, error), calls)
    func = get_registry().get("toy-broken").create()
    table = fresh_db.create_table("broken", schema=toy_schema(fresh_db, func))
    with pytest.raises(error):
        table.add([{"text": "abcd"}])
    assert len(calls) == 1


def test_query_embeddings_are_retried(fresh_db, fast_backoff):
    calls: list[str] = []
    register_toy(fresh_db, "toy-flaky-query", length_vector, calls)
    func = get_registry().get("toy-flaky-query").create()
    attempts = flaky(2, ConnectionError)
    func_vectors = func.compute_query_embeddings_with_retry
    assert func_vectors("abc") == [[3.0, 1.0]]
    seen = []

    def failing(query: Any) -> list[Any]:
        seen.append(query)
        return [attempts(query)]

    from embedsearch.contract.functions import retry_with_exponential_backoff

    assert retry_with_exponential_backoff(failing, initial_delay=0.001)("ab") == [[2.0, 1.0]]
    assert len(seen) == 3


def none_or_nan(text: str) -> Any:
    if text.startswith("none"):
        return None
    if text.startswith("nan"):
        return [math.nan, 1.0]
    return length_vector(text)


BAD_ROWS = [{"text": "none here"}, {"text": "nan here"}, {"text": "good"}]


@pytest.mark.parametrize("policy", ["drop", "fill", "null"])
def test_none_and_nan_vectors_follow_on_bad_vectors(fresh_db, lance_db, policy):
    outcomes = []
    for db in (fresh_db, lance_db):
        register_toy(db, "toy-bad", none_or_nan, [])
        func = sdk_of(db)[0].get("toy-bad").create()
        table = db.create_table("bad", schema=toy_schema(db, func))
        table.add(BAD_ROWS, on_bad_vectors=policy, fill_value=0.5)
        rows = sorted(table.to_arrow().to_pylist(), key=lambda r: r["text"])
        outcomes.append([(r["text"], r["vector"]) for r in rows])
    assert outcomes[0] == outcomes[1]


def test_none_vectors_with_on_bad_vectors_error_raise(fresh_db, lance_db):
    """LanceDB's ValueError reaches its caller wrapped in a RuntimeError; ours is a ValueError
    (an embedsearch.InvalidArgument)."""
    for db, error in ((fresh_db, ValueError), (lance_db, RuntimeError)):
        register_toy(db, "toy-none", none_or_nan, [])
        func = sdk_of(db)[0].get("toy-none").create()
        table = db.create_table("none", schema=toy_schema(db, func))
        with pytest.raises(error, match=r"(?i)vector"):
            table.add([{"text": "none at all"}, {"text": "good"}])
        assert table.count_rows() == 0


@pytest.mark.parametrize("wrap_api", [True, False])
def test_with_embeddings_adds_a_vector_column(wrap_api):
    """LanceDB's own test_with_embeddings (its helper is gone from lancedb 0.40's package)."""
    import pyarrow as pa

    data = pa.table({"text": ["foo", "barbaz"], "price": [10.0, 20.0]})
    out = with_embeddings(lambda t: [length_vector(x) for x in t], data, wrap_api=wrap_api)
    assert out.column_names == ["text", "price", "vector"]
    assert out["vector"].to_pylist() == [[3.0, 1.0], [6.0, 1.0]]
    assert out["price"].to_pylist() == [10.0, 20.0]


# -- pickling ---------------------------------------------------------------------------------


class Picklable(TextEmbeddingFunction):
    """A client-side function defined at module level, as pickling by reference needs."""

    device: str = "cpu"

    def ndims(self) -> int:
        return 2

    def generate_embeddings(self, texts: Any) -> list[Any]:
        return [length_vector(text) for text in texts]


def test_client_side_function_pickles():
    get_registry().register("toy-picklable")(Picklable)
    toy = get_registry().get("toy-picklable").create(device="cpu:3")
    back = pickle.loads(pickle.dumps(toy))
    assert back.device == "cpu:3" and back.safe_model_dump() == {"device": "cpu:3"}
    assert back.compute_source_embeddings(["abc"]) == [[3.0, 1.0]]


def test_bound_server_function_embeds_after_unpickling_in_another_process(
    stack, model_path, tmp_path
):
    """A function bound to a table pickles as (provider, args, URI); a fresh interpreter
    unpickles it, connects on first use, and embeds the same vectors."""
    db = embedsearch.connect(f"grpc://{stack.gateway}")
    func = get_registry().get("sentence-transformers").create(name=model_path)

    class Docs(LanceModel):
        text: str = func.SourceField()
        vector: Vector(func.ndims()) = func.VectorField()

    db.create_table("pickled_function", schema=Docs, mode="overwrite")
    bound = db.open_table("pickled_function").embedding_functions["vector"].function
    expected = np.asarray(func.compute_source_embeddings(["pickled in a parent"]))
    (tmp_path / "func.pkl").write_bytes(pickle.dumps(bound))
    script = textwrap.dedent(
        f"""
        import pickle, sys, numpy as np
        func = pickle.loads(open({str(tmp_path / "func.pkl")!r}, "rb").read())
        vectors = func.compute_source_embeddings(["pickled in a parent"])
        np.save({str(tmp_path / "out.npy")!r}, np.asarray(vectors))
        print(type(func).__name__, func.ndims(), func.connection().uri)
        """
    )
    output = in_a_fresh_interpreter(script)
    name, ndims, uri = output.split()
    assert (name, int(ndims), uri) == ("RemoteTextEmbeddingFunction", 384, db.uri)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-5)


def test_a_variable_only_the_client_holds_works_over_grpc(stack, model_path):
    """A client process sets $var:model; the gateway and embedder (this process) never see the
    value. The table is created, rows are embedded and a text search finds them: the SDK
    embeds through the server-hosted function, sending the value; the table keeps the
    reference. A process that has not set the variable is told to set it."""
    script = textwrap.dedent(
        f"""
        import json, embedsearch
        from embedsearch.embeddings import get_registry
        from embedsearch.pydantic import LanceModel, Vector
        registry = get_registry()
        registry.set_var("client_only_model", {model_path!r})
        func = registry.get("sentence-transformers").create(name="$var:client_only_model")

        class Docs(LanceModel):
            text: str = func.SourceField()
            vector: Vector(func.ndims()) = func.VectorField()

        db = embedsearch.connect("grpc://{stack.gateway}")
        table = db.create_table("client_variable", schema=Docs, mode="overwrite")
        table.add([{{"text": "red apples"}}, {{"text": "blue skies"}}])
        stored = json.loads(table.schema.metadata[b"embedding_functions"])[0]["model"]["name"]
        print(stored, table.search("fruit").limit(1).to_list()[0]["text"].replace(" ", "_"))
        """
    )
    output = in_a_fresh_interpreter(script)
    assert output.split() == ["$var:client_only_model", "red_apples"]
    here = embedsearch.connect(f"grpc://{stack.gateway}").open_table("client_variable")
    assert here.count_rows() == 2
    with pytest.raises(FailedPrecondition, match="client_only_model"):
        here.search("fruit").limit(1).to_list()


def in_a_fresh_interpreter(script: str) -> str:
    """What ``script`` prints, run by a new Python (nothing of this process's registry or
    variables); it must succeed."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "GRPC_VERBOSITY": "ERROR", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
