"""`kustomize build` of deploy/kubernetes without kustomize: exactly the features that kustomization uses.

Neither kustomize nor kubectl is installed by `make setup` (they are not Debian or PyPI packages we
can rely on), so the tests render the manifests here: `resources` (files), `namespace`, `labels`
(`pairs` on each object's own metadata), `secretGenerator` from `envs` files and
`generatorOptions.disableNameSuffixHash: true`. Anything else in the kustomization is refused, so
a feature added there cannot be silently ignored here. (Checked once by hand against `kubectl
kustomize` v5.5.0: the same objects.)
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

SUPPORTED_KEYS = {"apiVersion", "kind", "namespace", "labels", "resources", "secretGenerator", "generatorOptions"}
# Kinds that live outside any namespace, of those a deployment like this one might hold.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume",
                  "StorageClass", "PriorityClass", "RuntimeClass", "ValidatingWebhookConfiguration",
                  "MutatingWebhookConfiguration"}

Object = dict[str, Any]


class UnsupportedKustomization(Exception):
    """The kustomization uses a feature this renderer does not implement."""


def env_file_pairs(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as kustomize reads an `envs` file: leading blanks dropped, empty lines and
    `#` lines skipped, the value is everything after the first `=` (no quotes, no expansion)."""
    pairs: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:  # kustomize would take the value from its own environment: never wanted here
            raise UnsupportedKustomization(f"{path.name}:{number}: {key!r} has no '='")
        if key in pairs:
            raise UnsupportedKustomization(f"{path.name}:{number}: {key!r} twice")
        pairs[key] = value
    return pairs


def _secret(spec: dict[str, Any], base: Path) -> Object:
    unknown = set(spec) - {"name", "envs", "type"}
    if unknown:
        raise UnsupportedKustomization(f"secretGenerator {spec.get('name')!r}: {sorted(unknown)}")
    data: dict[str, str] = {}
    for env in spec.get("envs", []):
        for key, value in env_file_pairs(base / env).items():
            data[key] = base64.b64encode(value.encode()).decode()
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": spec["name"]},
            "type": spec.get("type", "Opaque"), "data": dict(sorted(data.items()))}


def _labels(entries: list[dict[str, Any]]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for entry in entries:
        if set(entry) - {"pairs", "includeSelectors", "includeTemplates"} or entry.get("includeSelectors") \
                or entry.get("includeTemplates"):
            raise UnsupportedKustomization(f"labels: only `pairs` (on the objects' own metadata): {entry}")
        labels.update(entry["pairs"])
    return labels


def render(directory: Path) -> list[Object]:
    """The objects `kustomize build DIRECTORY` prints (order aside)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED_KEYS
    if unknown:
        raise UnsupportedKustomization(f"kustomization.yaml: {sorted(unknown)}")
    if kustomization.get("generatorOptions") != {"disableNameSuffixHash": True} and "secretGenerator" in kustomization:
        raise UnsupportedKustomization("generatorOptions: only disableNameSuffixHash: true (no name hashes here)")
    objects: list[Object] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if not path.is_file():
            raise UnsupportedKustomization(f"resources: {resource} is not a file (no bases, no URLs)")
        objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    objects.extend(_secret(spec, directory) for spec in kustomization.get("secretGenerator", []))
    labels = _labels(kustomization.get("labels", []))
    namespace = kustomization.get("namespace")
    for obj in objects:
        metadata = obj.setdefault("metadata", {})
        if labels:
            metadata["labels"] = {**metadata.get("labels", {}), **labels}
        if namespace and obj["kind"] not in CLUSTER_SCOPED:
            metadata["namespace"] = namespace
        elif namespace and obj["kind"] == "Namespace" and metadata["name"] != namespace:
            raise UnsupportedKustomization(f"Namespace {metadata['name']!r} beside namespace: {namespace}")
    return objects
