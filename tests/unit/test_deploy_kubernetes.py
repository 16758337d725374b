"""deploy/kubernetes: what `kubectl apply -k` would send is valid Kubernetes and deploys what docs/deploy.md says.

Rendered offline by tests/support/kustomize.py (and compared with a real kustomize where one is on
PATH), each object checked against the schemas kubernetes-validate ships, strictly (an unknown or
misspelt field fails), then the properties that matter for Chaser asserted on the objects."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
from pydantic import ValidationError

from chaser.config import Settings
from tests.support import kustomize
from tests.unit.test_deploy import setting_names

KUBERNETES = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
# A recent release that kubernetes-validate 1.37.0 ships schemas for (1.x-local-strict), not its newest:
# clusters run a release or two behind.
KUBERNETES_VERSION = "1.35"
SECRET = "chaser"
SECRET_ENV_NAMES = {"CHASER_DATABASE_URL", "CHASER_NODE_TOKEN", "CHASER_ADMIN_KEY", "POSTGRES_PASSWORD"}

Object = dict[str, Any]


@pytest.fixture(scope="module")
def objects() -> list[Object]:
    return kustomize.render(KUBERNETES)


def one(objects: list[Object], kind: str, name: str) -> Object:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def pod_spec(workload: Object) -> Object:
    spec: Object = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Object, name: str) -> Object:
    (found,) = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    return found


def env(container_: Object) -> dict[str, Object]:
    return {item["name"]: item for item in container_.get("env", [])}


def keyed(objects: list[Object]) -> dict[tuple[str, str, str], Object]:
    """Objects by kind, namespace and name; a Secret's data decoded (kustomize wraps long base64)."""
    out = {}
    for obj in objects:
        if obj["kind"] == "Secret":
            obj = {**obj, "data": {k: base64.b64decode(v).decode() for k, v in obj["data"].items()}}
        out[(obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])] = obj
    return out


def test_the_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    for name in ("kustomization.yaml", "namespace.yaml", "secrets.env"):
        shutil.copy(KUBERNETES / name, tmp_path / name)
    text = (tmp_path / "kustomization.yaml").read_text()
    (tmp_path / "kustomization.yaml").write_text(text + "commonAnnotations:\n  team: sandboxes\n")
    with pytest.raises(kustomize.UnsupportedKustomization, match="commonAnnotations"):
        kustomize.render(tmp_path)


def test_every_object_is_valid_kubernetes(objects: list[Object]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert kinds == [("DaemonSet", "chaser-node"), ("Deployment", "chaser-api"), ("Namespace", "chaser"),
                     ("Secret", SECRET), ("Service", "chaser-api"), ("Service", "postgres"),
                     ("StatefulSet", "postgres")]
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)  # raises on the first error
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "chaser"
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "chaser"


def test_a_misspelt_field_fails_the_schema_check(objects: list[Object]) -> None:
    node = one(objects, "DaemonSet", "chaser-node")
    broken = {**node, "spec": {**node["spec"], "updateStrategy": {"type": "RollingUpdate", "rollingUpdat": {}}}}
    with pytest.raises(kubernetes_validate.ValidationError, match="rollingUpdat"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_node_runs_privileged_on_sandbox_machines_with_its_data_on_the_host(objects: list[Object]) -> None:
    node = one(objects, "DaemonSet", "chaser-node")
    spec = pod_spec(node)
    assert spec["nodeSelector"] == {"chaser.dev/sandbox": "true"}
    assert {"key": "chaser.dev/sandbox", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["hostPID"] is True  # the next pod sees the QEMUs a restarted one left, to adopt them
    namespace = one(objects, "Namespace", node["metadata"]["namespace"])
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert spec["terminationGracePeriodSeconds"] >= 60
    main = container(node, "node")
    assert main["command"] == ["chaser", "node"]
    assert main["securityContext"]["privileged"] is True and main["securityContext"]["runAsUser"] == 0
    variables = env(main)
    assert variables["CHASER_HOME"]["value"] == "/var/lib/chaser"
    assert variables["CHASER_KEEP_VMS_ON_EXIT"]["value"] == "true"  # a pod restart keeps the VMs running
    assert variables["HOST_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    assert variables["CHASER_ADVERTISE_URL"]["value"] == "http://$(HOST_IP):8081"
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    for path in ("/var/lib/chaser", "/run/netns", "/run/chaser"):  # what adoption reads after a restart
        assert host_paths[mounts[path]["name"]] == path
    assert mounts["/run/netns"]["mountPropagation"] == "Bidirectional"  # `ip netns add` mounts reach the host
    (guest,) = spec["initContainers"]
    assert "chaser guest build --template" in guest["command"][-1]
    assert {m["mountPath"]: m["name"] for m in guest["volumeMounts"]} == {"/var/lib/chaser": "data"}


def test_the_api_is_replicated_unprivileged_and_runs_no_vm(objects: list[Object]) -> None:
    api = one(objects, "Deployment", "chaser-api")
    assert api["spec"]["replicas"] >= 2
    main = container(api, "api")
    assert main["command"] == ["chaser", "server"]
    variables = env(main)
    assert variables["CHASER_LOCAL_RUNTIME"]["value"] == "false"
    assert variables["CHASER_HOST"]["value"] == "0.0.0.0"
    spec = pod_spec(api)
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "hostNetwork" not in spec and "hostPID" not in spec
    # What it writes is on emptyDirs; its home is below the mount point, which root owns (the
    # server makes its home 0700, which a non-root uid cannot do to a directory not its own).
    empty = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    mounted = {m["mountPath"] for m in main["volumeMounts"] if m["name"] in empty}
    assert "/tmp" in mounted
    home = Path(variables["CHASER_HOME"]["value"])
    assert str(home) not in mounted and any(home.is_relative_to(m) for m in mounted)
    assert Path(variables["CHASER_CONFIG"]["value"]).is_relative_to(home)
    service = one(objects, "Service", "chaser-api")
    assert service["spec"]["selector"] == api["spec"]["template"]["metadata"]["labels"]
    assert api["spec"]["selector"]["matchLabels"] == api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http"}]
    assert {"name": "http", "containerPort": int(variables["CHASER_PORT"]["value"])} in main["ports"]


def test_probes_ask_healthz_and_readyz_on_the_port_chaser_listens_on(objects: list[Object]) -> None:
    for kind, name, main in (("Deployment", "chaser-api", "api"), ("DaemonSet", "chaser-node", "node")):
        serving = container(one(objects, kind, name), main)
        (port,) = serving["ports"]
        variables = env(serving)
        listening = variables["CHASER_PORT"]["value"] if "CHASER_PORT" in variables \
            else variables["CHASER_NODE_LISTEN"]["value"].rpartition(":")[2]
        assert int(listening) == port["containerPort"]
        assert serving["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
        assert serving["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
        assert serving.get("startupProbe", {"httpGet": {"path": "/healthz"}})["httpGet"]["path"] == "/healthz"


def test_secrets_come_from_the_secret_never_inline(objects: list[Object]) -> None:
    secret = one(objects, "Secret", SECRET)
    placeholders = set(kustomize.env_file_pairs(KUBERNETES / "secrets.env").values())
    seen = set()
    for kind, name in (("Deployment", "chaser-api"), ("DaemonSet", "chaser-node"), ("StatefulSet", "postgres")):
        spec = pod_spec(one(objects, kind, name))
        for item in (i for c in spec["containers"] + spec.get("initContainers", []) for i in c.get("env", [])):
            assert item.get("value") not in placeholders, f"{kind}/{name} {item['name']}"
            assert "REPLACE_ME" not in item.get("value", "")
            if item["name"] in SECRET_ENV_NAMES:
                ref = item["valueFrom"]["secretKeyRef"]
                assert ref["name"] == SECRET and ref["key"] in secret["data"], f"{kind}/{name} {item['name']}"
                seen.add(item["name"])
    assert seen == SECRET_ENV_NAMES


def test_the_example_secrets_are_placeholders_that_fit_together(objects: list[Object]) -> None:
    values = kustomize.env_file_pairs(KUBERNETES / "secrets.env")
    assert set(values) == {"node-token", "admin-key", "postgres-password", "database-url"}
    assert all("REPLACE_ME" in value for value in values.values())
    url = urlsplit(values["database-url"])
    assert url.scheme == "postgresql+psycopg" and url.port == 5432 and url.path == "/chaser"
    assert url.username == "chaser" and url.password == values["postgres-password"]
    postgres = one(objects, "StatefulSet", "postgres")
    service = one(objects, "Service", postgres["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == \
        postgres["spec"]["template"]["metadata"]["labels"]
    assert url.hostname == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert postgres["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] in \
        {m["name"] for m in container(postgres, "postgres")["volumeMounts"]}
    assert container(postgres, "postgres")["image"] == "postgres:16"
    # Chaser refuses the placeholders it checks, so nobody runs with a token from this repository.
    if "node_token" in Settings.model_fields:
        with pytest.raises(ValidationError, match="CHASER_NODE_TOKEN"):
            Settings(node_token=values["node-token"])
    from chaser.service import keys

    if hasattr(keys, "check_given_key"):
        with pytest.raises(Exception, match="sk_"):
            keys.check_given_key(values["admin-key"])


def test_variables_expand_only_what_is_defined_before_them(objects: list[Object]) -> None:
    # Kubernetes expands $(NAME) in an env value only from variables listed earlier in the container.
    for obj in objects:
        if "template" not in obj.get("spec", {}):
            continue
        for c in pod_spec(obj)["containers"] + pod_spec(obj).get("initContainers", []):
            defined: set[str] = set()
            for item in c.get("env", []):
                for name in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", item.get("value", "")):
                    assert name in defined, f"{obj['metadata']['name']} {item['name']}: $({name}) not defined before"
                defined.add(item["name"])


def test_every_chaser_variable_named_is_a_setting() -> None:
    names = setting_names()
    used = {name for path in KUBERNETES.iterdir() for name in re.findall(r"\bCHASER_[A-Z0-9_]+", path.read_text())}
    assert len(used) >= 10
    assert sorted(used - names) == []
