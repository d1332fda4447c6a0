"""deploy/k8s: every manifest against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict), CRDs (KEDA, Prometheus Operator) structurally,
the kustomization, and the cross-references between the objects."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed: pip install 'quakescan[test]'")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
MANIFESTS = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
# The oldest Kubernetes still commonly run, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.27.0", "latest")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all() -> list[tuple[Path, dict]]:
    return [(p, d) for p in MANIFESTS for d in _docs(p)]


def _by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in _all() if d["kind"] == kind}


def _builtin() -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in _all() if not d["apiVersion"].startswith(CRD_GROUPS)]


def _workloads() -> list[dict]:
    return [d for _, d in _all() if d["kind"] in ("Deployment", "StatefulSet")]


def _kv():
    return pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate not installed (`pip install kubernetes-validate`): "
        "manifests not checked against the Kubernetes schemas",
    )


def _validate(kv, doc: dict, version: str) -> None:
    version = kv.latest_version() if version == "latest" else version
    kv.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "path,doc",
    _builtin(),
    ids=[f"{p.relative_to(K8S)}:{d['kind']}/{d['metadata']['name']}" for p, d in _builtin()],
)
def test_manifest_matches_kubernetes_schema(path, doc, version):
    _validate(_kv(), doc, version)


def test_schema_validation_rejects_mistakes():
    kv = _kv()
    worker = _by_kind("Deployment")["quakescan-worker"]
    broken = yaml.safe_load(yaml.safe_dump(worker))
    broken["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # typo: resources
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, kv.latest_version(), strict=True)
    broken = yaml.safe_load(yaml.safe_dump(worker))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, kv.latest_version(), strict=True)


def test_kustomization_lists_existing_files():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    for generator in kustomization["configMapGenerator"]:
        for entry in generator["files"]:
            assert (K8S / entry.split("=")[-1]).is_file(), entry
    # built-in kinds only, so `kubectl apply -k` works on any cluster
    for resource in kustomization["resources"]:
        for doc in _docs(K8S / resource):
            assert not doc["apiVersion"].startswith(CRD_GROUPS), resource


def test_kubectl_kustomize_builds_valid_objects():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found: `kubectl kustomize deploy/k8s` not run")
    proc = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    objects = [d for d in yaml.safe_load_all(proc.stdout) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in objects}
    for want in (
        ("Deployment", "quakescan-worker"),
        ("Deployment", "quakescan-feed"),
        ("Deployment", "quakescan-sink"),
        ("StatefulSet", "quakescan-redis"),
        ("NetworkPolicy", "quakescan-redis"),
    ):
        assert want in kinds
    (config_map,) = [d for d in objects if d["kind"] == "ConfigMap"]
    assert config_map["metadata"]["name"].startswith("quakescan-stations-")  # content hash
    assert "stations.toml" in config_map["data"]
    feed = next(
        d
        for d in objects
        if d["metadata"]["name"] == "quakescan-feed" and d["kind"] == "Deployment"
    )
    volumes = {v["name"]: v for v in feed["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "quakescan", obj["metadata"]["name"]
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    for obj in objects:
        kv.validate(obj, kv.latest_version(), strict=True)


def test_no_secret_values_are_committed():
    for path, doc in _all():
        assert doc["kind"] != "Secret", f"{path.name}: create the Secret out of band"
        assert "password" not in yaml.safe_dump(doc.get("data", {})).lower()


def test_workloads_run_hardened_with_probes_and_resources():
    for workload in _workloads():
        spec = workload["spec"]["template"]["spec"]
        name = workload["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert container["resources"]["requests"], name
            assert container["readinessProbe"] and container["livenessProbe"], name


def test_quakescan_containers_serve_health_on_their_metrics_port():
    ports = {"worker": 9101, "feed": 9102, "sink": 9103}
    for workload in _workloads():
        if workload["metadata"]["name"] == "quakescan-redis":
            continue
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        args = container["args"]
        port = ports[args[0]]
        assert args[args.index("--metrics-port") + 1] == str(port)
        assert container["ports"] == [{"name": "metrics", "containerPort": port}]
        assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        # /healthz pings Redis: liveness must not, or a Redis outage restarts every pod
        assert container["livenessProbe"]["tcpSocket"] == {"port": "metrics"}
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)


def test_quakescan_containers_get_the_redis_password_from_the_secret():
    for workload in _workloads():
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        ref = env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "quakescan-redis", "key": "password"}
        names = [e["name"] for e in container["env"]]
        for var in ("QUAKESCAN_BROKER_URL", "QUAKESCAN_RESULT_BACKEND", "QUAKESCAN_REDIS_URL"):
            if var not in env:
                continue
            # $(VAR) expands only from variables defined earlier in the list
            assert names.index("REDIS_PASSWORD") < names.index(var)
            assert re.fullmatch(
                r"redis://:\$\(REDIS_PASSWORD\)@quakescan-redis:6379/\d", env[var]["value"]
            )


def test_feeder_and_sink_are_singletons_on_persistent_volumes():
    deployments = _by_kind("Deployment")
    claims = _by_kind("PersistentVolumeClaim")
    for name, mount in (
        ("quakescan-feed", "/var/lib/quakescan/spool"),
        ("quakescan-sink", "/var/lib/quakescan/catalogs"),
    ):
        deployment = deployments[name]
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volume = next(v for v in pod["volumes"] if v["name"] == mounts[mount])
        assert volume["persistentVolumeClaim"]["claimName"] in claims


def test_redis_statefulset_persists_with_password():
    redis = _by_kind("StatefulSet")["quakescan-redis"]
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]


def test_services_select_existing_pods():
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in _workloads()]
    for name, service in _by_kind("Service").items():
        selector = service["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pod_labels), name


def test_deployment_selectors_do_not_overlap():
    deployments = list(_by_kind("Deployment").values())
    for a in deployments:
        for b in deployments:
            if a is b:
                continue
            sel = a["spec"]["selector"]["matchLabels"]
            labels = b["spec"]["template"]["metadata"]["labels"]
            assert not sel.items() <= labels.items(), (
                f"{a['metadata']['name']} would select pods of {b['metadata']['name']}"
            )


def test_keda_scaledobject_scales_workers_on_the_detect_list():
    (scaled,) = _by_kind("ScaledObject").values()
    target = scaled["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment"
    assert target["name"] in _by_kind("Deployment")
    assert 1 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    meta = trigger["metadata"]
    assert meta["listName"] == "detect" and meta["databaseIndex"] == "0"
    assert meta["address"].startswith("quakescan-redis.quakescan.svc")
    assert int(meta["listLength"]) > 0
    auth = _by_kind("TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref == {"parameter": "password", "name": "quakescan-redis", "key": "password"}


def test_hpa_alternative_uses_a_real_metric(metric_series):
    hpa = _by_kind("HorizontalPodAutoscaler")["quakescan-worker"]
    (metric,) = hpa["spec"]["metrics"]
    external = metric["external"]["metric"]
    assert external["name"] in metric_series
    assert set(external["selector"]["matchLabels"]) <= metric_series[external["name"]]


def test_servicemonitor_job_names_match_prometheus_and_alerts():
    (monitor,) = _by_kind("ServiceMonitor").values()
    services = _by_kind("Service")
    job_label = monitor["spec"]["jobLabel"]
    (expression,) = monitor["spec"]["selector"]["matchExpressions"]
    selected = [
        s
        for s in services.values()
        if s["metadata"]["labels"].get(expression["key"]) in expression["values"]
    ]
    jobs = {s["metadata"]["labels"][job_label] for s in selected}
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    compose_jobs = {sc["job_name"] for sc in prom["scrape_configs"]} - {"prometheus"}
    assert jobs == compose_jobs == {"quakescan-worker", "quakescan-feed", "quakescan-sink"}
    for service in selected:
        assert [p["name"] for p in service["spec"]["ports"]] == [
            monitor["spec"]["endpoints"][0]["port"]
        ]


def test_networkpolicy_admits_quakescan_pods_to_redis():
    (policy,) = _by_kind("NetworkPolicy").values()
    redis_labels = _by_kind("StatefulSet")["quakescan-redis"]["spec"]["template"]["metadata"][
        "labels"
    ]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= redis_labels.items()
    sources = policy["spec"]["ingress"][0]["from"]
    allowed = sources[0]["podSelector"]["matchLabels"]
    for workload in _workloads():
        if workload["metadata"]["name"] != "quakescan-redis":
            assert allowed.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
    assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 6379}]
