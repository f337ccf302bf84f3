"""Clients in other languages against the live stack: the Node.js client, and the README's
grpcurl commands run through server reflection alone."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.rpc import error_details_pb2

import embedsearch

ROOT = Path(__file__).resolve().parents[1]
NODE_CLIENT = ROOT / "clients" / "node"
GRPCURL = ROOT / "clients" / "reflection" / "grpcurl.py"
# Runs the reflection tool, then fails if it imported any of this project's packages: what it
# knows of the contract must come from the server.
ISOLATED = """
import runpy, sys
tool = runpy.run_path(sys.argv[1])
code = tool["main"](sys.argv[2:])
ours = {"embedsearch", "gateway", "store_service", "embedder_service"}
assert not [m for m in sys.modules if m.split(".")[0] in ours], "imported embedsearch"
sys.exit(code)
"""


@pytest.fixture(scope="session")
def node() -> str:
    """node, with the client's locked dependencies installed (npm ci) on first use."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not (node and npm):
        pytest.fail("the Node.js client test needs node and npm (apt-get install nodejs npm)")
    if not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_CLIENT,
            check=True,
            capture_output=True,
            timeout=600,
        )
    return node


def test_node_client_creates_adds_and_searches(node, stack, table_name):
    out = subprocess.run(
        [node, "example.js", "--address", stack.gateway, "--table", table_name],
        cwd=NODE_CLIENT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["table"] == table_name and result["rows_inserted"] == 3
    assert result["columns"] == ["id:int64", "text:string", "vector:vector(384)"]
    found = result["results"]
    assert found[0]["id"] == 1, found  # the cat, for "a kitten resting in the sun"
    distances = [row["_distance"] for row in found]
    assert distances == sorted(distances) and len(found) == 3
    # Read streams the rows back without a query: a filter and columns, in storage order.
    assert [(row["id"], sorted(row)) for row in result["read"]] == [
        (2, ["id", "text"]),
        (3, ["id", "text"]),
    ]

    # What Node wrote is an ordinary table: the Python SDK searches it through the binding.
    table = embedsearch.connect(f"grpc://{stack.gateway}").open_table(table_name)
    assert table.count_rows() == 3
    assert table.search("bread baking").limit(1).to_list()[0]["id"] == 3


def test_node_client_reports_a_failed_call(node, stack):
    out = subprocess.run(
        [node, "-e", NODE_MISSING_TABLE, stack.gateway],
        cwd=NODE_CLIENT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "code": 5,  # NOT_FOUND
        "reason": "TABLE_NOT_FOUND",
        "metadata": {"table": "no_such_table"},
        "described": "NOT_FOUND TABLE_NOT_FOUND table=no_such_table: ",
    }


NODE_MISSING_TABLE = """
const { connect, describeError } = require('./index.js');
const db = connect(process.argv[1]);
db.search('no_such_table', 'hello').then(
  () => { console.log('{"code": 0}'); db.close(); },
  (error) => {
    const { code, reason, errorMetadata: metadata } = error;
    const described = describeError(error).split(error.details)[0];
    console.log(JSON.stringify({ code, reason, metadata, described }));
    db.close();
  },
);
"""


def test_node_example_prints_the_reason_of_a_failure(node, stack):
    out = subprocess.run(
        [node, "example.js", "--address", stack.gateway, "--table", "not a valid name!"],
        cwd=NODE_CLIENT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("embedsearch: INVALID_ARGUMENT INVALID_ARGUMENT: "), out.stderr


@pytest.mark.parametrize("name", ["status.proto", "error_details.proto"])
def test_node_reads_error_details_with_googleapis_own_protos(name):
    """The client's google/rpc protos are those googleapis ships (googleapis-common-protos):
    copied, not rewritten, so that they decode what the servers encode."""
    shipped = Path(error_details_pb2.__file__).with_name(name)
    assert (NODE_CLIENT / "protos" / "google" / "rpc" / name).read_bytes() == shipped.read_bytes()


def readme_grpcurl_commands() -> list[list[str]]:
    """The grpcurl command lines of README.md, split as the shell would."""
    text = (ROOT / "README.md").read_text()
    commands = [shlex.split(line) for line in text.splitlines() if line.startswith("grpcurl ")]
    assert len(commands) >= 5, "README.md lost its grpcurl commands"
    return commands


def test_readme_grpcurl_flow_through_reflection_alone(stack, table_name):
    outputs = []
    for command in readme_grpcurl_commands():
        args = [
            stack.gateway if arg == "localhost:50050" else arg.replace('"docs"', f'"{table_name}"')
            for arg in command[1:]
        ]
        out = subprocess.run(
            [sys.executable, "-c", ISOLATED, str(GRPCURL), *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT / "clients",
        )
        assert out.returncode == 0, f"{shlex.join(command)}\n{out.stderr}"
        outputs.append(out.stdout)
    listing, description, created, added, searched = outputs[:5]
    assert "embedsearch.v1.Gateway" in listing.split()
    assert "rpc Search(embedsearch.v1.SearchRequest)" in description
    assert json.loads(created)["name"] == table_name
    assert json.loads(added)["rowsInserted"] == "2"  # uint64 is a string in proto JSON
    rows = json.loads(json.loads(searched)["rows"]["json"])
    assert rows[0]["text"] == "hello world" and "_distance" in rows[0]


def test_reflection_tool_reports_a_failed_call(stack):
    request = ["-d", '{"name": "no_such_table"}', "embedsearch.v1.Gateway/DescribeTable"]
    out = subprocess.run(
        [sys.executable, str(GRPCURL), "-plaintext", *request[:2], stack.gateway, request[2]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "Code: NOT_FOUND" in out.stderr
