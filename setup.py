"""Build hook: a wheel carries the gRPC stubs generated from protos/ (they are never committed).

``make install`` generates them in the working tree for an editable install; a plain
``pip install .`` generates them here, with the grpcio-tools of the build environment.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PROTOS = Path("protos")


class BuildPyWithStubs(build_py):
    """build_py, then protoc over protos/embedsearch/v1 into the build tree."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        import grpc_tools
        from grpc_tools import protoc

        out = Path(self.build_lib)
        well_known = Path(grpc_tools.__file__).parent / "_proto"
        sources = sorted(str(path) for path in (PROTOS / "embedsearch" / "v1").glob("*.proto"))
        outputs = [f"--{kind}_out={out}" for kind in ("python", "pyi", "grpc_python")]
        args = ["protoc", f"-I{PROTOS}", f"-I{well_known}", *outputs, *sources]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {sources}")
        (out / "embedsearch" / "v1" / "__init__.py").touch()


setup(cmdclass={"build_py": BuildPyWithStubs})
