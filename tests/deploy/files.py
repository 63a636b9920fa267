"""Readers of ``deploy/``: the CRDs by kind, the objects a kustomization installs, and the examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CRD_DIR = DEPLOY / "crds"
EXAMPLES = DEPLOY / "examples"

Obj = dict[str, Any]


def documents(path: Path) -> list[Obj]:
    """The non-empty YAML documents of one file."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def crds() -> dict[str, Obj]:
    """Every CRD under ``deploy/crds/``, by kind."""
    found: dict[str, Obj] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for doc in documents(path):
            found[doc["spec"]["names"]["kind"]] = doc
    return found


def kustomization_files(directory: Path = DEPLOY) -> list[Path]:
    """The files a kustomization lists, directories (other kustomizations) followed recursively."""
    listed = yaml.safe_load((directory / "kustomization.yaml").read_text())["resources"]
    out: list[Path] = []
    for entry in listed:
        target = (directory / entry).resolve()
        out.extend(kustomization_files(target) if target.is_dir() else [target])
    return list(dict.fromkeys(out))


def manifests(directory: Path = DEPLOY) -> list[Obj]:
    """Every object the kustomization in ``directory`` installs."""
    return [doc for path in kustomization_files(directory) for doc in documents(path)]


def example_files() -> list[Path]:
    """Every example manifest, ``deploy/examples/`` and its subdirectories."""
    return sorted(p for p in EXAMPLES.rglob("*") if p.suffix in (".yaml", ".yml"))
