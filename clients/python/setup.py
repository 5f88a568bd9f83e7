"""Builds the package with gRPC stubs generated from the repository's proto/ by grpcio-tools,
so the Python client always speaks the contract it was built from."""

import pathlib

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
PROTO = HERE.parent.parent / "proto"


class BuildWithStubs(build_py):
    """build_py, then `sentia/<service>/v1/*_pb2*.py` for every proto/sentia contract."""

    def run(self):
        super().run()
        from grpc_tools import protoc  # a build requirement (pyproject.toml)

        if not PROTO.is_dir():
            raise SystemExit(f"{PROTO} not found: build the package from a Sentia checkout")
        out = pathlib.Path(self.build_lib)
        files = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "sentia").rglob("*.proto"))
        include = pathlib.Path(protoc.__file__).parent / "_proto"
        code = protoc.main(
            ["protoc", f"-I{PROTO}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
            + files
        )
        if code != 0:
            raise SystemExit(f"protoc failed ({code}) on {files}")
        # Regular packages, so `sentia.vault.v1` is found inside this package.
        for f in files:
            d = out / pathlib.Path(f).parent
            while d != out / "sentia":
                (d / "__init__.py").touch()
                d = d.parent


setup(cmdclass={"build_py": BuildWithStubs})
