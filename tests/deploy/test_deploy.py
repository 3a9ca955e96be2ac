"""Static checks of the deployment files (Dockerfile, deploy/compose.yaml, deploy/k8s/).

No Docker engine or cluster is needed: the compose file is validated against the compose-spec JSON
schema vendored by check-jsonschema, the Kubernetes manifests against the API schemas shipped with
kubernetes-validate (strict: unknown fields fail), the Dockerfile is parsed with dockerfile-parse.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser
import kubernetes_validate

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose.yaml"
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.31.0"  # kubernetes-validate ships schemas for 1.25 .. its own version
COMPOSE_SCHEMA = "vendor.compose-spec"
APP = "service.app:create_app"


def _yaml(path: Path) -> dict:
    with path.open() as fh:
        return yaml.safe_load(fh)


def _check_jsonschema(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", *args], capture_output=True, text=True,
                          timeout=120)


# ---------------------------------------------------------------------------------------------- compose

@pytest.fixture(scope="module")
def compose() -> dict:
    return _yaml(COMPOSE)


def test_compose_schema_is_builtin():
    """The schema name exists in the installed check-jsonschema (names differ across versions)."""
    out = _check_jsonschema("--help")
    assert out.returncode == 0, out.stderr
    assert COMPOSE_SCHEMA in out.stdout


def test_compose_validates_against_compose_spec():
    out = _check_jsonschema("--builtin-schema", COMPOSE_SCHEMA, str(COMPOSE))
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_schema_rejects_a_broken_file(tmp_path):
    """The validation is not vacuous: an unknown service key fails."""
    broken = _yaml(COMPOSE)
    broken["services"]["r4t"]["helthcheck"] = broken["services"]["r4t"].pop("healthcheck")
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    out = _check_jsonschema("--builtin-schema", COMPOSE_SCHEMA, str(path))
    assert out.returncode != 0


def _mount(volume: str) -> tuple[str, str]:
    """(container path, mode) of a short-syntax volume; the host side may hold ${VAR:-default}."""
    match = re.search(r":(/[^:]*)(?::(ro|rw))?$", volume)
    assert match, volume
    return match.group(1), match.group(2) or ""


def _test_command(healthcheck: dict) -> str:
    test = healthcheck["test"]
    return test if isinstance(test, str) else " ".join(test)


def test_compose_services_and_order(compose):
    services = compose["services"]
    assert set(services) >= {"qdrant", "indexer", "r4t"}
    qdrant, indexer, r4t = services["qdrant"], services["indexer"], services["r4t"]

    image, _, tag = qdrant["image"].partition(":")
    assert image == "qdrant/qdrant" and re.fullmatch(r"v\d+\.\d+\.\d+", tag), "pin the Qdrant version"
    volume = qdrant["volumes"][0].split(":")[0]
    assert volume in compose["volumes"], "Qdrant storage must be a named volume"
    # The Qdrant image has no curl/wget: the probe must use bash's /dev/tcp on /readyz.
    probe = _test_command(qdrant["healthcheck"])
    assert "/dev/tcp/" in probe and "/readyz" in probe and "curl" not in probe and "wget" not in probe

    assert indexer["restart"] == "no"
    assert indexer["depends_on"]["qdrant"]["condition"] == "service_healthy"
    command = indexer["command"] if isinstance(indexer["command"], list) else shlex.split(indexer["command"])
    assert command[:2] == ["r4t", "index"] and "--qdrant-url" in command
    assert command[command.index("--qdrant-url") + 1] == "http://qdrant:6333"
    assert ("/data", "ro") in map(_mount, indexer["volumes"])
    assert ("/artifacts", "") in map(_mount, indexer["volumes"]), "the indexer writes index.json there"
    assert ("/artifacts", "ro") in map(_mount, r4t["volumes"])

    assert r4t["depends_on"]["qdrant"]["condition"] == "service_healthy"
    assert r4t["depends_on"]["indexer"]["condition"] == "service_completed_successfully"
    assert r4t["environment"]["R4T_QDRANT_URL"] == "http://qdrant:6333"
    assert any(str(p).endswith("8000") for p in r4t["ports"])
    devices = r4t["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    # Both app containers come from the Dockerfile at the repository root.
    for svc in (indexer, r4t):
        assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == DOCKERFILE


def test_compose_r4t_healthcheck_is_readiness(compose):
    probe = _test_command(compose["services"]["r4t"]["healthcheck"])
    assert "/readyz" in probe and "8000" in probe


# ------------------------------------------------------------------------------------------- kubernetes

def _manifests() -> list[Path]:
    kustomization = _yaml(K8S / "kustomization.yaml")
    return [K8S / name for name in kustomization["resources"]]


def test_kustomization_lists_existing_manifests():
    listed = _manifests()
    assert listed and all(p.is_file() for p in listed)
    others = {p.name for p in K8S.glob("*.yaml")} - {p.name for p in listed}
    assert others == {"kustomization.yaml", "qdrant-values.yaml"}, "every manifest must be listed"


@pytest.mark.parametrize("path", _manifests(), ids=lambda p: p.name)
def test_k8s_manifest_validates(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_k8s_strict_validation_rejects_unknown_fields():
    doc = _yaml(K8S / "deployment.yaml")
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _by_kind() -> dict[str, dict]:
    return {d["kind"]: d for p in _manifests() for d in yaml.safe_load_all(p.read_text()) if d}


def test_k8s_deployment():
    kinds = _by_kind()
    deployment = kinds["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "model loading takes a while"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # One process per GPU: the image's CMD (one uvicorn worker) is not overridden with --workers.
    assert "--workers" not in " ".join(container.get("command", []) + container.get("args", []))
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    config = kinds["ConfigMap"]
    assert container["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]
    assert all(k.startswith("R4T_") for k in config["data"])
    assert config["data"]["R4T_ARTIFACTS_DIR"] == "/artifacts"
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/artifacts")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"]["claimName"] == kinds["PersistentVolumeClaim"]["metadata"]["name"]

    service = kinds["Service"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"][0]["port"] == 80 and service["spec"]["ports"][0]["targetPort"] == 8000
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()

    hpa = kinds["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_qdrant_values_distributed():
    values = _yaml(K8S / "qdrant-values.yaml")
    assert values["replicaCount"] == 3
    assert values["config"]["cluster"]["enabled"] is True
    assert values["persistence"]["size"]
    # The same server version as compose.
    assert COMPOSE.read_text().count(f"qdrant/qdrant:{values['image']['tag']}") == 1
    text = (K8S / "qdrant-values.yaml").read_text()
    assert "shard_number" in text and "replication_factor" in text


# ------------------------------------------------------------------------------------------- Dockerfile

@pytest.fixture(scope="module")
def dockerfile() -> list[dict]:
    return [i for i in DockerfileParser(path=str(DOCKERFILE)).structure if i["instruction"] != "COMMENT"]


def _arg_defaults(instructions: list[dict]) -> dict[str, str]:
    args = {}
    for i in instructions:
        if i["instruction"] == "ARG" and "=" in i["value"]:
            name, _, default = i["value"].partition("=")
            args[name.strip()] = default.strip().strip('"')
    return args


def _exec_form(value: str) -> list[str]:
    return json.loads(value) if value.lstrip().startswith("[") else shlex.split(value)


def test_dockerfile_copy_sources_exist(dockerfile):
    args = _arg_defaults(dockerfile)
    copies = [i for i in dockerfile if i["instruction"] in ("COPY", "ADD")]
    assert copies
    for i in copies:
        words = shlex.split(i["value"])
        flags = [w for w in words if w.startswith("--")]
        if any(f.startswith("--from=") for f in flags):
            continue  # from another stage, not the build context
        sources = [w for w in words if not w.startswith("--")][:-1]
        assert sources, i["content"]
        for src in sources:
            src = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], src)
            assert (ROOT / src).exists(), f"COPY source {src} is not in the repository"
            assert not _dockerignored(src), f"COPY source {src} is excluded by .dockerignore"


def _dockerignored(src: str) -> bool:
    top = Path(src).parts[0]
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    return top in patterns


def test_dockerfile_multistage_runtime(dockerfile):
    froms = [i["value"] for i in dockerfile if i["instruction"] == "FROM"]
    assert len(froms) >= 2, "multi-stage build"
    base = _arg_defaults(dockerfile)["CUDA_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", base)
    assert any(i["instruction"] == "COPY" and "--from=builder" in i["value"] for i in dockerfile)


def test_dockerfile_runtime_settings(dockerfile):
    kinds = {i["instruction"] for i in dockerfile}
    assert "HEALTHCHECK" in kinds
    health = next(i["value"] for i in dockerfile if i["instruction"] == "HEALTHCHECK")
    assert "/healthz" in health and "curl" not in health
    users = [i["value"] for i in dockerfile if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(i["instruction"] == "EXPOSE" and "8000" in i["value"].split() for i in dockerfile)
    env = " ".join(i["value"] for i in dockerfile if i["instruction"] == "ENV")
    assert "R4T_ARTIFACTS_DIR=/artifacts" in env and "R4T_DEVICE=cuda" in env
    assert any(i["instruction"] == "VOLUME" and "/artifacts" in i["value"] for i in dockerfile)


def test_dockerfile_installs_no_torch(dockerfile):
    for i in dockerfile:
        if i["instruction"] != "RUN":
            continue
        for step in re.split(r"&&|;|\|\|", i["value"]):
            if "pip install" in step or "uv pip" in step:
                assert "torch" not in step and "[train]" not in step, step


def test_dockerfile_cmd_serves_the_app_factory(dockerfile):
    entry = [i for i in dockerfile if i["instruction"] in ("CMD", "ENTRYPOINT")]
    assert entry
    argv = [w for i in entry for w in _exec_form(i["value"])]
    assert APP in argv and "--factory" in argv
    assert "--workers" not in argv, "one process per GPU"
    if "--log-config" in argv:  # the file it names is copied in and a valid logging config
        target = argv[argv.index("--log-config") + 1]
        copy = next(i for i in dockerfile if i["instruction"] == "COPY" and target in i["value"])
        source = shlex.split(copy["value"])[-2]
        config = json.loads((ROOT / source).read_text())
        code = ("import json, logging, logging.config, sys; logging.config.dictConfig(json.load(open(sys.argv[1])));"
                "logging.getLogger('uvicorn.error').info('ok')")
        out = subprocess.run([sys.executable, "-c", code, str(ROOT / source)], capture_output=True, text=True,
                             cwd=ROOT, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stderr.strip().splitlines()[-1])["message"] == "ok"
        assert config["version"] == 1


def test_dockerignore_keeps_big_inputs_out():
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {".venv", "artifacts", "data", "results", ".git"} <= patterns


# ---------------------------------------------------------------------------------------------- supply chain

def test_constraints_pin_every_declared_dependency_and_every_install_uses_them(dockerfile):
    """constraints.txt holds one exact pin for each dependency pyproject.toml declares (extras too), every
    version inside the declared range; `make install` and the Dockerfile's pip install read it."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    for req in map(Requirement, declared):
        if req.marker and not req.marker.evaluate():  # onnxruntime is the one off linux x86-64
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is declared but not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is outside {req}"
    makefile = (ROOT / "Makefile").read_text()
    assert all("-c constraints.txt" in line for line in makefile.splitlines() if "pip install" in line
               and "--upgrade pip" not in line)
    runs = [i["value"] for i in dockerfile if i["instruction"] == "RUN" and "pip install" in i["value"]]
    assert runs and all("constraints.txt" in r for r in runs)
