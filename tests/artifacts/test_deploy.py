"""The Kubernetes manifests in deploy/: schema-valid, consistent with each other and with the exporter.

Core kinds are checked against the Kubernetes OpenAPI schemas shipped with kubernetes-validate, strict
(unknown fields fail). The Prometheus Operator CRDs are not in those schemas; they are checked against
the minimal JSON schemas below, which cover only the fields these manifests use (so a typo in one of
them fails), not the full CRDs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from exporter.config import load_config_text
from exporter.sharding import parse_shard, shard_of

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RULES = REPO / "alerts" / "exchange-eems.rules.yml"
# 1.28 is the oldest release that sets the apps.kubernetes.io/pod-index label the StatefulSet relies on.
KUBERNETES_VERSIONS = ("1.28", kubernetes_validate.utils.latest_version())
PORT = 10061

_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object", "required": ["name"], "additionalProperties": False,
    "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                   "namespace": {"type": "string"}, "labels": _LABELS, "annotations": _LABELS},
}
_DURATION = {"type": "string", "pattern": r"^(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?$"}
SERVICE_MONITOR_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": _METADATA,
        "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "additionalProperties": False,
                             "properties": {"matchLabels": _LABELS}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "required": ["port"],
                    "properties": {"port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
                                   "interval": _DURATION, "scrapeTimeout": _DURATION,
                                   "metricRelabelings": {"type": "array", "items": {
                                       "type": "object", "additionalProperties": False,
                                       "properties": {"sourceLabels": {"type": "array", "items": {"type": "string"}},
                                                      "separator": {"type": "string"},
                                                      "targetLabel": {"type": "string"},
                                                      "regex": {"type": "string"},
                                                      "replacement": {"type": "string"},
                                                      "action": {"enum": ["replace", "labeldrop"]}}}}}}},
            },
        },
    },
}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
        "metadata": _METADATA,
        "spec": {"type": "object", "required": ["groups"], "additionalProperties": False, "properties": {
            "groups": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                "properties": {"name": {"type": "string"}, "interval": _DURATION, "rules": {"type": "array", "items": {
                    "type": "object", "required": ["expr"], "additionalProperties": False,
                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                    "properties": {"alert": {"type": "string"}, "record": {"type": "string"},
                                   "expr": {"type": "string"}, "for": _DURATION,
                                   "labels": _LABELS, "annotations": _LABELS}}}}}}}},
    },
}
CRD_SCHEMAS = {"ServiceMonitor": SERVICE_MONITOR_SCHEMA, "PrometheusRule": PROMETHEUS_RULE_SCHEMA}


def _load_documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


DOCS = _load_documents()


def _one(kind: str, name: str | None = None) -> dict:
    found = [d for _, d in DOCS if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _container() -> dict:
    return _one("StatefulSet")["spec"]["template"]["spec"]["containers"][0]


def test_expected_kinds_present():
    kinds = sorted(d["kind"] for _, d in DOCS)
    assert kinds == sorted(["ConfigMap", "Secret", "Service", "Service", "StatefulSet",
                            "ServiceMonitor", "PrometheusRule", "NetworkPolicy"])


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("index", range(len(DOCS)), ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in DOCS])
def test_manifest_schema(index, version):
    _, doc = DOCS[index]
    if doc["kind"] in CRD_SCHEMAS:
        jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
    else:
        kubernetes_validate.validate(doc, version, strict=True)


def test_crd_schemas_can_fail():
    monitor = yaml.safe_load(yaml.safe_dump(_one("ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["scrapeTimout"] = "10s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = sorted(kustomization["resources"])
    assert listed == sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
    assert kustomization["images"][0]["name"] == _container()["image"].split(":")[0]


def test_prometheusrule_matches_the_rule_file():
    """Both are generated from one source (tests/artifacts/test_rules.py checks each against the generator)."""
    rule = _one("PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_prometheusrule_passes_promtool(tmp_path):
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    assert Path(promtool).is_file(), "promtool is required (Debian package 'prometheus'); not found"
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": _one("PrometheusRule")["spec"]["groups"]}, sort_keys=False))
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_statefulset_runs_one_shard_per_replica():
    statefulset = _one("StatefulSet")
    replicas = statefulset["spec"]["replicas"]
    container = _container()
    args = container["args"]
    assert args[:3] == ["run", "--config", "/etc/exchange-eems-exporter/config.yml"]
    assert args[args.index("--web.listen-address") + 1] == f":{PORT}"
    shard_arg = args[args.index("--shard") + 1]
    env = {e["name"]: e for e in container["env"]}
    variable = re.fullmatch(r"\$\((\w+)\)/(\d+)", shard_arg)
    assert variable, shard_arg
    assert env[variable.group(1)]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['apps.kubernetes.io/pod-index']"
    assert int(variable.group(2)) == replicas, "--shard N must equal the StatefulSet's replicas"
    # What the kubelet hands the exporter in each pod: every shard valid, and together they cover the fleet.
    config = _exporter_config_text()
    servers = yaml.safe_load(config)["servers"]
    covered = []
    for ordinal in range(replicas):
        k, n = parse_shard(shard_arg.replace(f"$({variable.group(1)})", str(ordinal)))
        assert (k, n) == (ordinal, replicas)
        covered += [s for s in servers if shard_of(s, n) == k]
    assert sorted(covered) == sorted(servers)


def test_pod_is_locked_down():
    pod = _one("StatefulSet")["spec"]["template"]["spec"]
    container = _container()
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": PORT}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"


RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def test_pod_meets_the_restricted_pod_security_standard():
    """docs/scaling.md says the namespace can enforce the `restricted` Pod Security Standard (kubernetes.io, "Pod
    Security Standards"): its controls, as this pod's fields express them. test_pod_is_locked_down did not look at
    seccompProfile, host namespaces or volume types, so a pod that lost them still passed."""
    pod = _one("StatefulSet")["spec"]["template"]["spec"]
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert pod.get(key, False) is False, key
    assert pod["securityContext"]["seccompProfile"]["type"] in {"RuntimeDefault", "Localhost"}
    assert "sysctls" not in pod["securityContext"]
    for volume in pod["volumes"]:
        assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, volume
    for container in pod["containers"] + pod.get("initContainers", []):
        security = container["securityContext"]
        assert security.get("privileged", False) is False
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"] and set(security["capabilities"].get("add", [])) <= {
            "NET_BIND_SERVICE"}
        assert security.get("runAsNonRoot", pod["securityContext"]["runAsNonRoot"]) is True
        assert security.get("runAsUser", pod["securityContext"]["runAsUser"]) != 0
        assert not any("hostPort" in port for port in container.get("ports", []))
        assert security.get("procMount", "Default") == "Default"
    assert "enforce: restricted" in " ".join(SCALING.read_text().split())


def test_services_and_monitor_select_the_pods():
    statefulset = _one("StatefulSet")
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    services = [d for _, d in DOCS if d["kind"] == "Service"]
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    assert len(headless) == 1 and statefulset["spec"]["serviceName"] == headless[0]["metadata"]["name"]
    for service in services:
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert service["spec"]["ports"][0]["targetPort"] == "http" and service["spec"]["ports"][0]["port"] == PORT
    monitor = _one("ServiceMonitor")
    selected = [s for s in services if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert selected == headless, "the ServiceMonitor must scrape each shard once, through the headless Service"
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in headless[0]["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def _mounts() -> dict[str, dict]:
    pod = _one("StatefulSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in _container()["volumeMounts"]}


def _exporter_config_text() -> str:
    return _one("ConfigMap")["data"]["config.yml"]


def test_config_and_secret_are_wired_and_the_config_loads(tmp_path):
    mounts = _mounts()
    config_volume = mounts["/etc/exchange-eems-exporter"]
    assert config_volume["configMap"]["name"] == _one("ConfigMap")["metadata"]["name"]
    config_text = _exporter_config_text()
    password_files = [m["password_file"] for m in yaml.safe_load(config_text)["modules"].values()]
    secret = _one("Secret")
    for password_file in password_files:
        directory, key = password_file.rsplit("/", 1)
        assert mounts[directory]["secret"]["secretName"] == secret["metadata"]["name"]
        assert key in secret["stringData"]
    assert not any(value in config_text for value in secret["stringData"].values())
    assert "password_env" not in config_text, "passwords come from the mounted Secret file only"
    # The real config loader must accept the shipped config; the Secret's mount is played by a temp file.
    secret_file = tmp_path / "winrm-password"
    secret_file.write_text(next(iter(secret["stringData"].values())))
    rewritten = config_text
    for password_file in password_files:
        rewritten = rewritten.replace(password_file, str(secret_file))
    config = load_config_text(rewritten, tmp_path)
    assert config.servers and all(m.password is not None for m in config.modules.values())
    for mount, volume in mounts.items():
        if "emptyDir" in volume:
            assert mount == "/tmp"


def _pod_template_snippets() -> list[tuple[str, dict]]:
    """YAML blocks in the docs that show what to add to the StatefulSet's pod template (a `containers:` list)."""
    found = []
    for path in sorted((REPO / "docs").glob("*.md")):
        text = path.read_text()
        for match in re.finditer(r"```ya?ml\n(.*?)```", text, re.S):
            try:
                data = yaml.safe_load(match.group(1))
            except yaml.YAMLError:  # an illustration of another format
                continue
            if isinstance(data, dict) and "containers" in data:
                found.append((f"{path.name}:{text[:match.start()].count(chr(10)) + 1}", data))
    return found


def test_docs_pod_template_snippets_name_the_statefulsets_container():
    """docs/kerberos.md's snippet named its container `exchange-eems-exporter`, the StatefulSet's is `exporter`:
    merged by name (kubectl patch, a kustomize strategic-merge patch) it added a second container without an
    image instead of giving the exporter KRB5_CONFIG and the keytab's mount."""
    snippets = _pod_template_snippets()
    assert snippets, "docs/kerberos.md shows the Kerberos Secret's mount in the pod template"
    pod = _one("StatefulSet")["spec"]["template"]["spec"]
    names = {c["name"] for c in pod["containers"]}
    for where, snippet in snippets:
        for container in snippet["containers"]:
            assert container["name"] in names, f"{where}: no container {container['name']!r} in the StatefulSet"
        for volume in snippet.get("volumes", []):
            assert volume["name"] not in {v["name"] for v in pod["volumes"]}, f"{where}: volume {volume['name']} exists"


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
SCALING = REPO / "docs" / "scaling.md"


def _bytes(quantity: str) -> int:
    """A Kubernetes memory quantity with a binary suffix (what the manifests use) in bytes."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity)
    assert match, f"expected <n>Ki, <n>Mi or <n>Gi, got {quantity!r}"
    return int(match[1]) * _BINARY[match[2]]


def documented_peak_rss() -> int:
    """The peak RSS docs/scaling.md measured for one instance at the fleet size where it says to shard (2,000)."""
    match = re.search(r"^\| peak RSS \| \*\*(\d+) MiB\*\* \|", SCALING.read_text(), flags=re.M)
    assert match, "docs/scaling.md section 3 has a `peak RSS` row with the fleet preset's figure"
    return int(match[1]) * 2**20


def test_memory_request_covers_the_documented_peak_and_the_docs_state_it():
    """The default StatefulSet is one replica meant for up to about 2,000 servers (docs/scaling.md, "When to shard"),
    where one instance peaked at 197 MiB. A request of 128Mi below that let the scheduler place the pod where that
    memory was not there, and made it the kubelet's first eviction candidate (usage above request) under memory
    pressure. The request must cover the measured peak, the limit must leave room above it, and the sentence in
    docs/scaling.md that states them must say what the manifest says."""
    resources = _container()["resources"]
    request, limit = _bytes(resources["requests"]["memory"]), _bytes(resources["limits"]["memory"])
    peak = documented_peak_rss()
    assert request >= peak, f"memory request {resources['requests']['memory']} is below the documented peak RSS"
    assert limit >= 2 * peak, f"memory limit {resources['limits']['memory']} leaves no room above the documented peak"
    stated = (f"requests {resources['requests']['cpu']}/{resources['requests']['memory']} and limits "
              f"{resources['limits']['cpu']} CPU/{resources['limits']['memory']}")
    assert stated in " ".join(SCALING.read_text().split()), f"docs/scaling.md should say: {stated}"


def test_docs_secret_volumes_have_the_mode_the_pod_gives_them():
    """With the pod's fsGroup the kubelet makes every file of a Secret volume group-owned by fsGroup and adds group
    read to its mode, so docs/kerberos.md's `defaultMode: 0400` (and docs/security.md's "a Secret mounted 0400")
    described a mode the keytab never has: it is 0440, as the WinRM password's volume says. Readable by the pod's
    user through its group, by nobody else in the container."""
    pod = _one("StatefulSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    (password,) = [v for v in pod["volumes"] if "secret" in v]
    assert password["secret"]["defaultMode"] == 0o440
    for where, snippet in _pod_template_snippets():
        for volume in snippet.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"].get("defaultMode") == 0o440, f"{where}: {volume}"
    assert "mounted 0400" not in (REPO / "docs" / "security.md").read_text()


def _ports_polled(config_text: str, tmp_path: Path) -> set[int]:
    """The TCP ports the exporter connects to for WinRM with this configuration: each server's own port, else its
    module's, and the organization server's module's."""
    secret_file = tmp_path / "winrm-password"
    secret_file.write_text("placeholder")
    for password_file in {m["password_file"] for m in yaml.safe_load(config_text)["modules"].values()}:
        config_text = config_text.replace(password_file, str(secret_file))
    config = load_config_text(config_text, tmp_path)
    ports = {s.port or config.modules[s.module].port for s in config.servers}  # load_config names every module
    if config.organization is not None:
        ports.add(config.modules[config.organization.module].port)
    return ports


def _egress_ports(policy: dict) -> set[tuple[str, int]]:
    return {(p.get("protocol", "TCP"), p["port"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}


def _missing_egress(policy: dict, config_text: str, tmp_path: Path) -> set[tuple[str, int]]:
    needed = {("TCP", port) for port in _ports_polled(config_text, tmp_path)} | {("UDP", 53), ("TCP", 53)}
    return needed - _egress_ports(policy)


def test_network_policy_lets_the_pod_reach_only_what_polling_needs(tmp_path):
    """The pod holds a credential that opens a shell on every Exchange server, and nothing limited where it could
    connect: deploy/ had no NetworkPolicy. It must select the exporter's pods, isolate them both ways, allow egress
    on DNS and the WinRM ports the ConfigMap polls (every egress rule limited to ports), and ingress only on the
    exporter's port and only from selected peers."""
    policy = _one("NetworkPolicy")
    pod_labels = _one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    for rule in policy["spec"]["egress"]:
        assert rule.get("ports"), f"an egress rule without ports allows every port: {rule}"
    assert not _missing_egress(policy, _exporter_config_text(), tmp_path)
    assert _egress_ports(policy) <= {("UDP", 53), ("TCP", 53)} | {("TCP", p) for p in
                                                                  _ports_polled(_exporter_config_text(), tmp_path)}
    container_ports = {p["name"] for p in _container()["ports"]}
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from"), f"an ingress rule without from admits every client: {rule}"
        assert {p["port"] for p in rule["ports"]} <= container_ports


def test_network_policy_check_fails_when_the_configmap_polls_another_port(tmp_path):
    """The check above can fail: a module moved to plain HTTP (5985) is not let out by the shipped policy."""
    moved = _exporter_config_text().replace("scheme: https", "scheme: http").replace("port: 5986", "port: 5985")
    assert _missing_egress(_one("NetworkPolicy"), moved, tmp_path) == {("TCP", 5985)}
