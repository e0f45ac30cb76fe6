"""The compiled contracts: ABI and bytecode shipped beside their Vyper sources, and the compiler that made them.

The JSON files are what every process uses (nothing is compiled or downloaded at run time). ``compile_all``
rebuilds them with the pinned ``vyper`` package (the ``chain`` extra); ``python -m hivemesh.chain.artifacts``
rewrites them after a source changes, and a test proves that recompiling the shipped sources gives the shipped
bytecode.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

CONTRACTS = ("NodePool", "SessionPayment", "CheckpointAnchor")
VYPER_VERSION = (
    "0.4.3"  # the compiler every shipped artifact was built with (pinned in pyproject's chain extra)
)


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str  # 0x-prefixed deployment bytecode
    source_sha256: str
    compiler: str


def contracts_dir() -> Path:
    return Path(str(resources.files("hivemesh.chain") / "contracts"))


def source(name: str) -> str:
    return (contracts_dir() / f"{name}.vy").read_text()


@cache
def load(name: str) -> Artifact:
    """The shipped artifact of one contract."""
    if name not in CONTRACTS:
        raise ValueError(f"unknown contract {name!r}; contracts are {CONTRACTS}")
    data = json.loads((contracts_dir() / f"{name}.json").read_text())
    return Artifact(name, data["abi"], data["bytecode"], data["source_sha256"], data["compiler"])


def compile_source(name: str, text: str) -> Artifact:
    """Compile one Vyper source with the installed (pinned) compiler."""
    import vyper  # the chain extra's pinned compiler; only needed to rebuild artifacts

    if vyper.__version__ != VYPER_VERSION:
        raise RuntimeError(f"artifacts are built with vyper {VYPER_VERSION}, found {vyper.__version__}")
    out = vyper.compile_code(text, output_formats=["abi", "bytecode"])
    digest = hashlib.sha256(text.encode()).hexdigest()
    return Artifact(name, out["abi"], out["bytecode"], digest, f"vyper {VYPER_VERSION}")


def compile_all() -> dict[str, Artifact]:
    return {name: compile_source(name, source(name)) for name in CONTRACTS}


def write(artifact: Artifact, directory: Path) -> Path:
    path = directory / f"{artifact.name}.json"
    body = {
        "contract": artifact.name,
        "compiler": artifact.compiler,
        "source_sha256": artifact.source_sha256,
        "abi": artifact.abi,
        "bytecode": artifact.bytecode,
    }
    path.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
    return path


if __name__ == "__main__":  # python -m hivemesh.chain.artifacts: rebuild the shipped JSON
    for art in compile_all().values():
        write(art, contracts_dir())
