"""Bundles: a folder with `manifest.json` and the graph files it describes.

The manifest carries everything a runtime needs and nothing it must guess: the schema version, the model family
and variant, the processing policy, each graph's file, sha256 and I/O contract, the precision and backend target,
provenance (checkpoint hash, tool versions, date) and the verification results of the build. Loading checks the
schema and every artifact's hash, so a tampered or half-copied bundle is refused instead of giving wrong masks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .contract import GraphContract
from .processing import ProcessingPolicy

SCHEMA = "sammed-edge-bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
GRAPHS = ("encoder", "decoder")
_REQUIRED = ("schema", "schema_version", "model", "processing", "target", "graphs", "provenance", "verification")


class BundleError(ValueError):
    """A bundle that cannot be used as is; the message says what is wrong."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def validate_manifest(manifest: Mapping[str, Any]) -> None:
    """Raise BundleError unless `manifest` follows this runtime's schema."""
    if not isinstance(manifest, Mapping):
        raise BundleError("manifest is not a JSON object")
    if manifest.get("schema") != SCHEMA:
        raise BundleError(f"not a {SCHEMA} manifest (schema = {manifest.get('schema')!r})")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(f"bundle schema version {version!r} is not supported by this runtime (supports {SCHEMA_VERSION}); rebuild the bundle or upgrade sammed-edge")
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise BundleError(f"manifest lacks {missing}")
    for name in GRAPHS:
        graph = manifest["graphs"].get(name)
        if not isinstance(graph, Mapping) or not {"file", "sha256", "contract"} <= set(graph):
            raise BundleError(f"manifest graph {name!r} needs 'file', 'sha256' and 'contract'")
        if Path(graph["file"]).name != graph["file"]:
            raise BundleError(f"graph file {graph['file']!r} must be a plain file name inside the bundle")
    try:
        ProcessingPolicy.from_dict(manifest["processing"])
        for name in GRAPHS:
            GraphContract.from_dict(manifest["graphs"][name]["contract"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"manifest is malformed: {exc}") from None


@dataclass(frozen=True)
class Bundle:
    """A loaded, validated bundle."""

    root: Path
    manifest: dict[str, Any]

    @property
    def policy(self) -> ProcessingPolicy:
        return ProcessingPolicy.from_dict(self.manifest["processing"])

    @property
    def backend(self) -> str:
        return str(self.manifest["target"]["backend"])

    def contract(self, graph: str) -> GraphContract:
        return GraphContract.from_dict(self.manifest["graphs"][graph]["contract"])

    def path(self, graph: str) -> Path:
        return self.root / self.manifest["graphs"][graph]["file"]

    def artifact(self, graph: str, key: str) -> Path:
        """Path of an extra artifact of a graph (e.g. a TensorRT engine next to its ONNX)."""
        return self.root / self.manifest["graphs"][graph][key]


def load_bundle(path: str | Path, verify_hashes: bool = True) -> Bundle:
    """Read and check a bundle folder.

    Args:
        path: the bundle folder (or its manifest.json).
        verify_hashes: recompute every artifact's sha256 (on by default; only skip for trusted, read-only media).

    Raises:
        BundleError: missing folder or files, malformed or unsupported manifest, hash mismatch.
    """
    root = Path(path)
    if root.is_file() and root.name == MANIFEST:
        root = root.parent
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{root} is not a bundle: no {MANIFEST}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from None
    validate_manifest(manifest)
    for graph in manifest["graphs"].values():
        # every artifact is `file` (hash `sha256`) or `<kind>_file` (hash `<kind>_sha256`)
        for key, value in graph.items():
            if key != "file" and not key.endswith("_file"):
                continue
            artifact = root / value
            if not artifact.is_file():
                raise BundleError(f"bundle artifact {artifact} is missing")
            expected = graph.get("sha256" if key == "file" else key[: -len("file")] + "sha256")
            if verify_hashes and expected is not None:
                digest = sha256_file(artifact)
                if digest != expected:
                    raise BundleError(
                        f"{value} does not match the manifest (sha256 {digest[:12]}… != {expected[:12]}…): "
                        "the bundle was modified or damaged; rebuild or re-copy it"
                    )
    return Bundle(root=root, manifest=manifest)


def write_manifest(root: str | Path, manifest: Mapping[str, Any]) -> Path:
    """Validate and write `manifest.json` (graph hashes must already be filled in)."""
    validate_manifest(manifest)
    path = Path(root) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path
