"""The Kubernetes manifests in deploy/kubernetes/, the Dockerfile and docs/deploy.md.

(a) Every manifest validates against the Kubernetes 1.30 schemas (kubernetes-validate,
strict: an unknown field is an error; the schemas ship in the package, no network). The
two kinds it has no schema for are checked here: a ServiceMonitor against the JSON schema
below (the subset of the monitoring.coreos.com/v1 CRD that the manifests use), a
Kustomization by its resource list.
(b) Cross-checks between the manifests, the node.toml each ConfigMap embeds (read by the
real config loader), the Dockerfile and the SPIRE entries in docs/deploy.md.
(c) Each embedded node.toml, with only its Workload API socket and listen addresses
rewritten, runs as a real node against the Workload API test server and becomes ready with
the SVID the server hands out.
"""

from __future__ import annotations

import argparse
import copy
import re
import shlex
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Final, cast

import httpx
import jsonschema
import pytest
import trio
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError, validate
from prometheus_client.parser import text_string_to_metric_families

import meshtls
from meshtls._cli import build_parser
from meshtls._config import NodeConfig, WorkloadApiIdentity, parse_config
from meshtls.testing import CA

from .logfmt import parse_json
from .test_node_cli import SLACK, bound_ports, node_process
from .workload_server import WorkloadApiServer, svid_message, x509_response

ROOT: Final = Path(__file__).parent.parent
DEPLOY: Final = ROOT / "deploy" / "kubernetes"
DOCKERFILE: Final = ROOT / "deploy" / "Dockerfile"
GUIDE: Final = ROOT / "docs" / "deploy.md"
KUBERNETES: Final = "1.30"  # the version whose schemas the manifests must satisfy
WAIT: Final = 10.0  # seconds: the bound on starting a node; each takes well under one
NOW: Final = datetime.now(UTC)  # the node judges its SVID at the wall clock

#: SPIRE sets not_before this far back (credtemplate.NotBeforeCushion), whatever the TTL.
SPIRE_BACKDATE: Final = timedelta(seconds=10)
#: SPIRE's default X509-SVID TTL, when neither the entry nor the server sets one.
SPIRE_DEFAULT_TTL: Final = timedelta(hours=1)

#: The fields of a monitoring.coreos.com/v1 ServiceMonitor that the manifests use, with
#: the operator CRD's names and types; anything else is refused, so a misspelt field fails.
SERVICE_MONITOR_SCHEMA: Final = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "namespace": {"type": "string", "minLength": 1},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "minProperties": 1,
                            "additionalProperties": {"type": "string"},
                        }
                    },
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                        "any": {"type": "boolean"},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string", "minLength": 1},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                        },
                    },
                },
            },
        },
    },
}

#: Kinds kubernetes-validate has no schema for, each checked by its own test here.
CHECKED_HERE: Final = {"ServiceMonitor", "Kustomization"}


# ---------------------------------------------------------------- reading YAML


def mapping(value: object, where: str) -> dict[str, object]:
    assert isinstance(value, dict), f"{where}: expected a mapping, got {value!r}"
    return cast(dict[str, object], value)


def items(value: object, where: str) -> list[object]:
    assert isinstance(value, list), f"{where}: expected a list, got {value!r}"
    return cast(list[object], value)


def text(value: object, where: str) -> str:
    assert isinstance(value, str), f"{where}: expected a string, got {value!r}"
    return value


def dig(value: object, *path: str) -> object:
    """`value[path[0]][path[1]]...`, failing with the path when a step is missing."""
    for depth, key in enumerate(path):
        here = mapping(value, ".".join(path[:depth]) or "document")
        assert key in here, f"{'.'.join(path[: depth + 1])} is missing"
        value = here[key]
    return value


def labels(value: object, where: str) -> dict[str, str]:
    return {key: text(v, f"{where}.{key}") for key, v in mapping(value, where).items()}


@dataclass(frozen=True)
class Resource:
    path: Path
    doc: dict[str, object]

    @property
    def kind(self) -> str:
        return text(self.doc.get("kind"), f"{self.where} kind")

    @property
    def name(self) -> str:
        return text(dig(self.doc, "metadata", "name"), f"{self.where} name")

    @property
    def namespace(self) -> str | None:
        value = mapping(self.doc.get("metadata"), self.where).get("namespace")
        return None if value is None else text(value, f"{self.where} namespace")

    @property
    def where(self) -> str:
        return str(self.path.relative_to(ROOT))

    def __str__(self) -> str:
        return f"{self.where}:{self.doc.get('kind')}"


def load(path: Path) -> list[Resource]:
    with path.open(encoding="utf-8") as file:
        return [Resource(path, mapping(doc, str(path))) for doc in yaml.safe_load_all(file) if doc]


DIRECTORIES: Final = sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml"))
RESOURCES: Final = [r for path in sorted(DEPLOY.rglob("*.yaml")) for r in load(path)]


def in_directory(directory: Path, kind: str) -> list[Resource]:
    return [r for r in RESOURCES if r.path.parent == directory and r.kind == kind]


def one(directory: Path, kind: str, name: str | None = None) -> Resource:
    found = [r for r in in_directory(directory, kind) if name is None or r.name == name]
    assert len(found) == 1, f"{directory}: expected one {kind} {name or ''}, found {found}"
    return found[0]


# ---------------------------------------------------------------- the workloads


@dataclass(frozen=True)
class Workload:
    """A DaemonSet or Deployment, its meshtls container and the node.toml it runs."""

    resource: Resource
    pod: dict[str, object]  # spec.template
    container: dict[str, object]  # the meshtls container
    configmap: Resource
    config_key: str
    toml: str

    @property
    def pod_spec(self) -> dict[str, object]:
        return mapping(self.pod.get("spec"), f"{self.resource} pod spec")

    def containers(self) -> list[dict[str, object]]:
        """Every container of the pod: init (sidecar) ones too."""
        spec = self.pod_spec
        found = items(spec.get("initContainers", []), "initContainers")
        found += items(spec.get("containers"), "containers")
        return [mapping(c, f"{self.resource} container") for c in found]

    def config(self, base_dir: Path) -> NodeConfig:
        return parse_config(self.toml, base_dir=base_dir)

    def port(self, port: object) -> int:
        """A port, by number or by name, of the meshtls container."""
        if isinstance(port, int):
            return port
        for item in items(self.container.get("ports"), "ports"):
            entry = mapping(item, "port")
            if entry.get("name") == port:
                number = entry.get("containerPort")
                assert isinstance(number, int)
                return number
        raise AssertionError(f"{self.resource}: no container port named {port!r}")

    def container_ports(self) -> set[int]:
        numbers = set()
        for container in self.containers():
            for entry in items(container.get("ports", []), "ports"):
                number = mapping(entry, "port").get("containerPort")
                assert isinstance(number, int)
                numbers.add(number)
        return numbers


def workloads() -> list[Workload]:
    found = []
    for resource in RESOURCES:
        if resource.kind not in {"DaemonSet", "Deployment"}:
            continue
        pod = mapping(dig(resource.doc, "spec", "template"), f"{resource} template")
        workload_containers = [
            mapping(c, "container")
            for key in ("initContainers", "containers")
            for c in items(mapping(pod["spec"], "spec").get(key, []), key)
        ]
        (container,) = [c for c in workload_containers if c.get("name") == "meshtls"]
        args = node_args(container)
        config_path = PurePosixPath(str(args.config))
        (mount,) = [
            mapping(m, "volumeMount")
            for m in items(container.get("volumeMounts"), "volumeMounts")
            if mapping(m, "volumeMount").get("mountPath") == str(config_path.parent)
        ]
        volume = volume_named(pod, text(mount.get("name"), "mount name"))
        configmap_name = text(dig(volume, "configMap", "name"), "configMap name")
        configmap = one(resource.path.parent, "ConfigMap", configmap_name)
        toml = text(dig(configmap.doc, "data", config_path.name), "node.toml")
        found.append(Workload(resource, pod, container, configmap, config_path.name, toml))
    return found


def node_args(container: dict[str, object]) -> argparse.Namespace:
    """The container's arguments, read by the real `meshtls` parser."""
    args = [text(a, "arg") for a in items(container.get("args"), "args")]
    assert "command" not in container, "the image's ENTRYPOINT is meshtls"
    namespace = build_parser().parse_args(args)
    assert namespace.command == "node"
    return namespace


def volume_named(pod: dict[str, object], name: str) -> dict[str, object]:
    for volume in items(dig(pod, "spec", "volumes"), "volumes"):
        if mapping(volume, "volume").get("name") == name:
            return mapping(volume, name)
    raise AssertionError(f"no volume named {name!r}")


WORKLOADS: Final = workloads()


def by_name(workload: Workload) -> str:
    return f"{workload.resource.kind}/{workload.resource.name}"


@pytest.fixture(params=WORKLOADS, ids=by_name)
def workload(request: pytest.FixtureRequest) -> Workload:
    found: Workload = request.param
    return found


def test_the_manifests_hold_a_daemonset_and_a_sidecar() -> None:
    kinds = sorted(by_name(w) for w in WORKLOADS)
    assert kinds == ["DaemonSet/meshtls-node", "Deployment/web"]
    sidecar = next(w for w in WORKLOADS if w.resource.kind == "Deployment")
    init = items(sidecar.pod_spec.get("initContainers"), "initContainers")
    assert sidecar.container in init  # a native sidecar: an init container ...
    assert sidecar.container.get("restartPolicy") == "Always"  # ... that keeps running
    main = items(sidecar.pod_spec["containers"], "containers")
    assert [mapping(c, "container").get("name") for c in main] == ["app"]


# ---------------------------------------------------------------- (a) schemas


@pytest.mark.parametrize("resource", RESOURCES, ids=str)
def test_every_manifest_validates_against_the_kubernetes_schemas(resource: Resource) -> None:
    if resource.kind in CHECKED_HERE:
        with pytest.raises(SchemaNotFoundError):
            validate(resource.doc, KUBERNETES, strict=True)
        return
    assert validate(resource.doc, KUBERNETES, strict=True) == KUBERNETES


def test_the_validator_refuses_an_unknown_field_and_a_wrong_type() -> None:
    """The check above can fail: a misspelt probe and a port written as a string."""
    daemonset = one(DEPLOY, "DaemonSet")
    broken = copy.deepcopy(daemonset.doc)
    container = mapping(items(dig(broken, "spec", "template", "spec", "containers"), "c")[0], "c")
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(ValidationError, match="readinesProbe"):
        validate(broken, KUBERNETES, strict=True)
    broken = copy.deepcopy(daemonset.doc)
    container = mapping(items(dig(broken, "spec", "template", "spec", "containers"), "c")[0], "c")
    mapping(items(container["ports"], "ports")[0], "port")["containerPort"] = "8443"
    with pytest.raises(ValidationError):
        validate(broken, KUBERNETES, strict=True)


@pytest.mark.parametrize("monitor", [r for r in RESOURCES if r.kind == "ServiceMonitor"], ids=str)
def test_service_monitors_have_the_operator_fields(monitor: Resource) -> None:
    jsonschema.validate(monitor.doc, SERVICE_MONITOR_SCHEMA)
    broken = copy.deepcopy(monitor.doc)
    endpoint = mapping(items(dig(broken, "spec", "endpoints"), "endpoints")[0], "endpoint")
    endpoint["targetPort"] = endpoint.pop("port")  # a real CRD field, but not ours to use
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SERVICE_MONITOR_SCHEMA)


@pytest.mark.parametrize("directory", DIRECTORIES, ids=lambda d: str(d.relative_to(ROOT)))
def test_each_kustomization_lists_every_manifest_beside_it(directory: Path) -> None:
    (kustomization,) = load(directory / "kustomization.yaml")
    assert kustomization.doc["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    listed = [text(r, "resource") for r in items(kustomization.doc["resources"], "resources")]
    present = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(listed) == sorted(present)


def test_every_namespace_used_is_defined_beside_its_resources() -> None:
    for resource in RESOURCES:
        if resource.kind in {"Namespace", "Kustomization"}:
            continue
        assert resource.namespace, f"{resource} names no namespace"
        one(resource.path.parent, "Namespace", resource.namespace)


# ---------------------------------------------------------------- (b) cross-checks


def test_probes_reach_the_configured_metrics_address(workload: Workload, tmp_path: Path) -> None:
    metrics = workload.config(tmp_path).node.metrics
    assert metrics is not None
    host, port = metrics
    assert host in {"0.0.0.0", "::"}  # noqa: S104 (the kubelet probes the pod address)
    probes = {
        kind: mapping(workload.container.get(kind), kind)
        for kind in ("livenessProbe", "readinessProbe", "startupProbe")
        if kind in workload.container
    }
    paths = {kind: dig(probe, "httpGet", "path") for kind, probe in probes.items()}
    assert paths["livenessProbe"] == "/healthz"
    assert paths["readinessProbe"] == "/readyz"
    assert paths.get("startupProbe", "/readyz") == "/readyz"
    for kind, probe in probes.items():
        assert workload.port(dig(probe, "httpGet", "port")) == port, kind


def test_the_ports_are_those_the_config_listens_on(workload: Workload, tmp_path: Path) -> None:
    config = workload.config(tmp_path)
    listening = {config.node.listen[1]} | {e.listen[1] for e in config.expose}
    assert config.node.metrics is not None
    listening.add(config.node.metrics[1])
    meshtls_ports = {
        workload.port(mapping(p, "p")["name"]) for p in items(workload.container["ports"], "ports")
    }
    assert meshtls_ports == listening
    assert workload.port("mesh") == config.node.listen[1]


def test_the_socket_mount_is_where_the_config_looks(workload: Workload, tmp_path: Path) -> None:
    identity = workload.config(tmp_path).identity
    assert isinstance(identity, WorkloadApiIdentity)
    assert identity.address is not None
    assert identity.address.startswith("unix:///")
    socket = PurePosixPath(identity.address.removeprefix("unix://"))
    (mount,) = [
        mapping(m, "mount")
        for m in items(workload.container["volumeMounts"], "volumeMounts")
        if mapping(m, "mount").get("mountPath") == str(socket.parent)
    ]
    assert mount.get("readOnly") is True
    volume = volume_named(workload.pod, text(mount["name"], "name"))
    assert volume.get("csi") == {"driver": "csi.spiffe.io", "readOnly": True}
    # The documented alternative, commented out beside it, mounts the agent's directory.
    source = workload.resource.path.read_text(encoding="utf-8")
    assert "#     path: /run/spire/agent-sockets" in source


def test_the_pods_meet_pod_security_restricted(workload: Workload) -> None:
    namespace = one(workload.resource.path.parent, "Namespace", workload.resource.namespace)
    namespace_labels = labels(dig(namespace.doc, "metadata", "labels"), "labels")
    assert namespace_labels["pod-security.kubernetes.io/enforce"] == "restricted"
    spec = workload.pod_spec
    pod_security = mapping(spec["securityContext"], "securityContext")
    assert pod_security["runAsNonRoot"] is True
    assert dig(pod_security, "seccompProfile", "type") == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    for container in workload.containers():
        security = mapping(container["securityContext"], f"{container['name']} securityContext")
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security.get("privileged", False) is False
        assert dig(security, "capabilities", "drop") == ["ALL"]
        assert "hostPath" not in str(spec["volumes"])
    user = re.search(r"^USER (\d+):(\d+)$", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert user is not None
    assert (pod_security["runAsUser"], pod_security["runAsGroup"]) == tuple(
        int(g) for g in user.groups()
    )


def test_the_image_is_a_placeholder_and_runs_the_dockerfiles_command(workload: Workload) -> None:
    assert workload.container["image"] == "registry.example.com/meshtls:PLACEHOLDER"
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r'^ENTRYPOINT \["meshtls"\]$', dockerfile, re.M)
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd is not None
    assert yaml.safe_load(cmd.group(1)) == workload.container["args"]


def test_shutdown_and_startup_fit_the_pods_timers(workload: Workload, tmp_path: Path) -> None:
    node = workload.config(tmp_path).node
    grace = workload.pod_spec["terminationGracePeriodSeconds"]
    assert isinstance(grace, int)
    assert grace >= node.shutdown_timeout.total_seconds() + 10  # drain, then exit in time
    if "startupProbe" in workload.container:  # the node gives up before the probe does
        probe = mapping(workload.container["startupProbe"], "startupProbe")
        period, failures = probe["periodSeconds"], probe["failureThreshold"]
        assert isinstance(period, int)
        assert isinstance(failures, int)
        assert period * failures > node.startup_timeout.total_seconds()


def test_prometheus_annotations_name_the_metrics_port(workload: Workload, tmp_path: Path) -> None:
    metrics = workload.config(tmp_path).node.metrics
    assert metrics is not None
    annotations = labels(dig(workload.pod, "metadata", "annotations"), "annotations")
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(metrics[1])
    assert annotations["prometheus.io/path"] == "/metrics"


def service_for(workload: Workload) -> Resource:
    pod_labels = labels(dig(workload.pod, "metadata", "labels"), "pod labels")
    (service,) = [
        s
        for s in in_directory(workload.resource.path.parent, "Service")
        if labels(dig(s.doc, "spec", "selector"), "selector").items() <= pod_labels.items()
    ]
    assert service.namespace == workload.resource.namespace
    return service


def service_ports(service: Resource) -> dict[str, dict[str, object]]:
    ports = items(dig(service.doc, "spec", "ports"), "ports")
    return {text(mapping(p, "p")["name"], "name"): mapping(p, "p") for p in ports}


def test_the_service_selects_the_pods_and_targets_their_ports(
    workload: Workload, tmp_path: Path
) -> None:
    service = service_for(workload)
    config = workload.config(tmp_path)
    ports = service_ports(service)
    for name, port in ports.items():
        target = port["targetPort"]
        if isinstance(target, str):  # a name resolves in main containers only
            assert workload.container in items(workload.pod_spec["containers"], "containers")
        assert workload.port(target) in workload.container_ports(), name
    assert workload.port(ports["mesh"]["targetPort"]) == config.node.listen[1]
    assert config.node.metrics is not None
    assert workload.port(ports["metrics"]["targetPort"]) == config.node.metrics[1]


def test_the_service_monitor_selects_the_service_and_its_metrics_port(workload: Workload) -> None:
    service = service_for(workload)
    (monitor,) = in_directory(workload.resource.path.parent, "ServiceMonitor")
    selector = labels(dig(monitor.doc, "spec", "selector", "matchLabels"), "matchLabels")
    service_labels = labels(dig(service.doc, "metadata", "labels"), "service labels")
    assert selector.items() <= service_labels.items()
    assert service.namespace in items(
        dig(monitor.doc, "spec", "namespaceSelector", "matchNames"), "matchNames"
    )
    (endpoint,) = items(dig(monitor.doc, "spec", "endpoints"), "endpoints")
    endpoint = mapping(endpoint, "endpoint")
    ports = service_ports(service)
    assert endpoint["port"] in ports
    assert workload.port(ports[text(endpoint["port"], "port")]["targetPort"]) == workload.port(
        "metrics"
    )
    assert endpoint["path"] == "/metrics"


def spiffe_id_of(workload: Workload, trust_domain: str) -> str:
    """SPIRE's usual id for a pod: spiffe://TD/ns/NAMESPACE/sa/SERVICE_ACCOUNT."""
    account = text(workload.pod_spec["serviceAccountName"], "serviceAccountName")
    one(workload.resource.path.parent, "ServiceAccount", account)
    return f"spiffe://{trust_domain}/ns/{workload.resource.namespace}/sa/{account}"


def test_peers_are_services_with_the_ids_of_the_pods_behind_them(tmp_path: Path) -> None:
    peers = [(w, p) for w in WORKLOADS for p in w.config(tmp_path).peers]
    assert peers, "the sidecar example shows a [[peers]] entry"
    for _, peer in peers:
        host, port = peer.address
        match = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local", host)
        assert match, f"{host} is not a Service's cluster DNS name"
        name, namespace = match.groups()
        (service,) = [
            r
            for r in RESOURCES
            if r.kind == "Service" and (r.name, r.namespace) == (name, namespace)
        ]
        (target,) = [w for w in WORKLOADS if service_for(w) == service]
        mesh = service_ports(service)["mesh"]
        assert mesh["port"] == port
        assert target.port(mesh["targetPort"]) == target.config(tmp_path).node.listen[1]
        assert str(peer.id) == spiffe_id_of(target, peer.id.trust_domain.name)


# ---------------------------------------------------------------- docs/deploy.md


@dataclass(frozen=True)
class Entry:
    """One ``spire-server entry create`` from the guide."""

    spiffe_id: str
    parent_id: str | None
    selectors: tuple[str, ...]
    x509_ttl: int | None
    node: bool


def guide_entries() -> list[Entry]:
    blocks = re.findall(r"```sh\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)
    found = []
    for block in blocks:
        words = shlex.split(block.replace("\\\n", " "))
        if words[:3] != ["spire-server", "entry", "create"]:
            continue
        options: dict[str, list[str]] = {}
        node = False
        rest = iter(words[3:])
        for word in rest:
            if word == "-node":
                node = True
            else:
                options.setdefault(word, []).append(next(rest))
        ttl = options.get("-x509SVIDTTL")
        (parent,) = options.get("-parentID", [None])
        found.append(
            Entry(
                spiffe_id=options["-spiffeID"][0],
                parent_id=parent,
                selectors=tuple(options.get("-selector", [])),
                x509_ttl=int(ttl[0]) if ttl else None,
                node=node,
            )
        )
    return found


def test_the_guide_registers_each_workload_with_its_selectors(tmp_path: Path) -> None:
    entries = guide_entries()
    (alias,) = [e for e in entries if e.node]
    workload_entries = {e.spiffe_id: e for e in entries if not e.node}
    assert len(workload_entries) == len(WORKLOADS)
    for workload in WORKLOADS:
        config = workload.config(tmp_path)
        assert config.authorize.member_of is not None
        trust_domain = config.authorize.member_of.name
        entry = workload_entries[spiffe_id_of(workload, trust_domain)]
        assert entry.parent_id == alias.spiffe_id
        account = workload.pod_spec["serviceAccountName"]
        expected = {f"k8s:ns:{workload.resource.namespace}", f"k8s:sa:{account}"}
        if workload.resource.kind == "Deployment":  # the sidecar: not the app's container
            expected.add(f"k8s:container-name:{workload.container['name']}")
        assert set(entry.selectors) == expected


def lifetime_verdict(config: NodeConfig, ttl: timedelta) -> str:
    """What the config's policy says of an SVID that SPIRE issues with this TTL."""
    ca = CA("example.org", now=NOW)
    issued = ca.issue(
        "spiffe://example.org/ns/meshtls/sa/meshtls-node",
        not_before=NOW - SPIRE_BACKDATE,
        not_after=NOW + ttl,
    )
    try:
        meshtls.verify_svid(issued.chain, ca.bundle_set(), policy=config.policy, now=NOW)
    except meshtls.VerificationError as exc:
        return exc.reason
    return "ok"


def test_the_guides_svid_ttl_passes_the_policy_and_spires_default_does_not(
    workload: Workload, tmp_path: Path
) -> None:
    config = workload.config(tmp_path)
    ttls = {e.x509_ttl for e in guide_entries() if not e.node}
    assert ttls == {1800}
    assert lifetime_verdict(config, timedelta(seconds=1800)) == "ok"
    assert lifetime_verdict(config, SPIRE_DEFAULT_TTL) == "ttl_exceeded"


# ---------------------------------------------------------------- (c) the config runs


def rewritten(toml: str, socket: Path) -> str:
    """The embedded node.toml with only the socket and the listen addresses changed."""
    changed, count = re.subn(
        r'^workload_api = "unix:///[^"]+"$',
        f'workload_api = "unix://{socket}"',
        toml,
        flags=re.M,
    )
    assert count == 1
    changed, count = re.subn(
        r'^(listen|metrics) = "0\.0\.0\.0:\d+"', r'\1 = "127.0.0.1:0"', changed, flags=re.M
    )
    assert count == toml.count('"0.0.0.0:')
    return changed


def bound_port(node: meshtls.Node, name: str) -> int:
    (listener, *_) = node.listeners[name]
    number: int = listener.socket.getsockname()[1]
    return number


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[WorkloadApiServer]:
    """A Workload API on a short socket path (Unix socket paths are capped near 108 bytes)."""
    with WorkloadApiServer(tmp_path / "agent.sock") as started:
        yield started


async def test_the_embedded_config_runs_against_the_workload_api(
    workload: Workload, tmp_path: Path, agent: WorkloadApiServer
) -> None:
    config = workload.config(tmp_path)
    assert config.authorize.member_of is not None
    spiffe_id = spiffe_id_of(workload, config.authorize.member_of.name)
    now = datetime.now(UTC)  # not the module's NOW: the suite may reach this test minutes later
    ca = CA(config.authorize.member_of, now=now)
    # What SPIRE hands out for the guide's entry: not_before 10 s back, 30 min TTL.
    issued = ca.issue(
        spiffe_id, not_before=now - SPIRE_BACKDATE, not_after=now + timedelta(minutes=30)
    )
    agent.push(x509_response([svid_message(issued, [ca.certificate])]))

    node_config = parse_config(rewritten(workload.toml, agent.path), base_dir=tmp_path)
    assert node_config.identity == WorkloadApiIdentity(address=agent.address)
    assert (node_config.policy, node_config.authorize, node_config.peers) == (
        config.policy,
        config.authorize,
        config.peers,
    )
    with trio.fail_after(WAIT):
        async with meshtls.open_node(node_config) as node:
            base = f"http://127.0.0.1:{bound_port(node, 'metrics')}"
            async with httpx.AsyncClient() as http:
                ready = await http.get(f"{base}/readyz")
                status = (await http.get(f"{base}/status")).json()
                scraped = await http.get(f"{base}/metrics")
                alive = await http.get(f"{base}/healthz")
    assert ready.status_code == 200
    assert ready.text.startswith("ready")  # the dialer pool adds "; peers N/M connected"
    assert alive.status_code == 200
    assert status["svid"]["spiffe_id"] == spiffe_id
    assert status["svid"]["serial"] == format(issued.leaf.serial_number, "x")
    assert agent.calls >= 1
    families = {f.name: f for f in text_string_to_metric_families(scraped.text)}
    (expiry,) = families["meshtls_certificate_expiry_seconds"].samples
    assert 29 * 60 < expiry.value <= 30 * 60


async def test_the_containers_command_runs_and_stops_within_the_grace_period(
    workload: Workload, tmp_path: Path, agent: WorkloadApiServer
) -> None:
    """The container's own args (only --config moved), as a process: ready, then SIGTERM."""
    config = workload.config(tmp_path)
    assert config.authorize.member_of is not None
    spiffe_id = spiffe_id_of(workload, config.authorize.member_of.name)
    now = datetime.now(UTC)
    ca = CA(config.authorize.member_of, now=now)
    issued = ca.issue(
        spiffe_id, not_before=now - SPIRE_BACKDATE, not_after=now + timedelta(minutes=30)
    )
    agent.push(x509_response([svid_message(issued, [ca.certificate])]))
    node_toml = tmp_path / workload.config_key
    node_toml.write_text(rewritten(workload.toml, agent.path), encoding="utf-8")
    args = [text(a, "arg") for a in items(workload.container["args"], "args")]
    assert args[0] == "node"
    args[args.index("--config") + 1] = str(node_toml)
    assert args[args.index("--log-format") + 1] == "json"  # one JSON object per line

    async with node_process(tmp_path, *args[1:]) as (process, lines):
        with trio.fail_after(WAIT):
            ready = parse_json(
                await lines.until(lambda line: parse_json(line)["msg"] == "node ready")
            )
        assert ready["id"] == spiffe_id
        ports = bound_ports(ready)
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"http://127.0.0.1:{ports['metrics']}/readyz")
        assert answer.status_code == 200
        process.send_signal(signal.SIGTERM)  # what the kubelet sends first
        grace = workload.pod_spec["terminationGracePeriodSeconds"]
        assert isinstance(grace, int)
        with trio.fail_after(min(config.node.shutdown_timeout.total_seconds() + SLACK, grace)):
            code = await process.wait()
    assert code == 0, await lines.rest()
