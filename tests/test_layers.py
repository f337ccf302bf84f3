"""Dependencies point one way: contract ← service kit ← services, contract ← SDK.

Read from the source with ``ast``, so a lazy import inside a function counts as much as one at
the top of a module. Only ``embedsearch.local`` (embedded mode) may reach the services from the
SDK, and only ``if TYPE_CHECKING:`` imports are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("embedsearch", "service_kit", "gateway", "store_service", "embedder_service")
SERVICES = ("gateway", "store_service", "embedder_service")
CONTRACT = ("embedsearch.contract", "embedsearch.v1")
EMBEDDED_MODE = "embedsearch.local"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def first_party_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "v1" not in path.relative_to(ROOT).parts:
                found[module_name(path)] = path
    return found


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(path: Path, lazy: bool) -> set[str]:
    """First-party modules ``path`` imports: all of them, or only those run at import time."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_block(child):
                continue
            if isinstance(child, ast.Import) and (top or lazy):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and (top or lazy):
                found.add(child.module)
                found.update(f"{child.module}.{alias.name}" for alias in child.names)
            inner = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            visit(child, top and not inner)

    visit(tree, True)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def within(name: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def layer_violations(module: str, target: str) -> str | None:
    """Why ``module`` may not import ``target``, or None when it may."""
    own = module.split(".")[0]
    if target == "embedsearch" or within(target, CONTRACT):
        return None  # the package root is light: it loads the client side lazily
    if within(module, CONTRACT):
        return "the contract imports neither the SDK nor a service"
    if own == "service_kit" and not within(target, "service_kit"):
        return "the service kit stands on the contract only"
    if own in SERVICES and not within(target, (own, "service_kit")):
        return "a service imports the contract, the kit and itself, never the SDK or a peer"
    if own == "embedsearch" and module != EMBEDDED_MODE and target.split(".")[0] != "embedsearch":
        return "the SDK's client side imports no service and no server runtime"
    return None


def test_dependencies_point_one_way() -> None:
    modules = first_party_modules()
    violations = []
    for module, path in sorted(modules.items()):
        for target in sorted(imports_of(path, lazy=True)):
            why = layer_violations(module, target)
            if why:
                violations.append(f"{module} imports {target}: {why}")
    assert not violations, "\n".join(violations)


def test_no_import_cycles() -> None:
    modules = first_party_modules()
    graph = {
        module: {target for target in imports_of(path, lazy=False) if target in modules}
        for module, path in modules.items()
    }
    state: dict[str, int] = {}

    def cycle_from(module: str, trail: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*trail[trail.index(target) :], target] if target in trail else [target]
            if not state.get(target):
                found = cycle_from(target, [*trail, target])
                if found:
                    return found
        state[module] = 2
        return None

    for module in sorted(graph):
        if not state.get(module):
            found = cycle_from(module, [module])
            assert found is None, " → ".join(found)


@pytest.mark.parametrize("probe", ["embedsearch.contract.errors", "embedsearch.v1.gateway_pb2"])
def test_contract_loads_without_the_client_side(probe: str) -> None:
    """A service importing the contract does not load the SDK's connection code."""
    import subprocess
    import sys

    code = (
        f"import sys, {probe}; "
        "loaded = [m for m in sys.modules if m in ('embedsearch.db', 'embedsearch.table')]; "
        "print(loaded); assert not loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
