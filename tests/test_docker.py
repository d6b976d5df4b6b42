"""docker/: no Docker engine runs here, so the images and the compose file are checked statically.

hadolint lints the Dockerfile; BuildKit's own parser reads it; the compose file, interpolated as
`docker compose` would with the variables of docker/.env.example, must satisfy the Compose
specification (strict model: a misspelt key fails) and wire the cluster the way the DAGs need.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import compose_spec
import dockerfile
import pytest
import yaml

from glassfinder import settings
from glassfinder.ops import cluster

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
AIRFLOW_COMPONENTS = {
    "airflow-apiserver": ["api-server"],
    "airflow-scheduler": ["scheduler"],
    "airflow-dag-processor": ["dag-processor"],
    "airflow-triggerer": ["triggerer"],
    "airflow-worker": ["celery", "worker"],
    "airflow-gpu-worker": ["celery", "worker"],
}
_VAR = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR:?error}, $$ -> $."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        value = env.get(name)
        if op in (":-", "-"):
            return value if value else arg
        if op in (":?", "?") and not value:
            raise KeyError(f"{name}: {arg}")
        return value or ""

    return _VAR.sub(sub, text)


def env_example() -> dict[str, str]:
    """docker/.env.example's variables, the empty (secret) ones filled as an operator would."""
    env = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        line = line.lstrip("# ").strip()
        if re.match(r"^[A-Z_][A-Z0-9_]*=", line):
            name, _, value = line.partition("=")
            env[name] = value or f"test-{name.lower()}"
    return env


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    text = interpolate((DOCKER / "compose.yaml").read_text(), env_example())
    resolved = yaml.safe_load(text)  # YAML merge keys resolved, as docker compose does
    compose_spec.PyCompose.from_json(json.dumps(resolved))  # raises on anything off-spec
    return resolved


@pytest.fixture(scope="module")
def stages() -> dict[str, list[Any]]:
    """Dockerfile instructions per build stage."""
    out: dict[str, list[Any]] = {}
    current = ""
    for ins in dockerfile.parse_file(str(DOCKER / "Dockerfile")):
        if ins.cmd == "FROM":
            current = ins.value[-1] if len(ins.value) == 3 else ins.value[0]
            out[current] = []
        out[current].append(ins)
    return out


def test_hadolint_is_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    proc = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKER / "Dockerfile")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_builds_both_images_from_the_repository(stages: dict[str, list[Any]]) -> None:
    assert set(stages) == {"base", "airflow", "gpu-worker"}
    base_image = stages["base"][0].value[0]
    assert re.match(r"^python:3\.11[\w.-]*$", base_image), base_image  # the lock's torch is cp311
    for stage, instructions in stages.items():
        for ins in instructions:
            if ins.cmd == "COPY" and not any(f.startswith("--from") for f in ins.flags):
                for src in ins.value[:-1]:
                    assert (REPO / src).exists(), f"{stage}: COPY {src} does not exist in the repository"
    env = dict(zip(*[iter(next(i.value for i in stages["base"] if i.cmd == "ENV"))] * 2, strict=True))
    for stage in ("airflow", "gpu-worker"):
        copies = {i.value[0]: i.value[-1] for i in stages[stage] if i.cmd == "COPY"}
        assert copies["dags"] == env["AIRFLOW__CORE__DAGS_FOLDER"]
        assert copies["plugins"] == env["AIRFLOW__CORE__PLUGINS_FOLDER"]
        runs = " ".join(" ".join(i.value) for i in stages[stage] if i.cmd == "RUN")
        assert "--constraint requirements.lock ." in runs
        assert "pip check" in runs
        assert [i.value[0] for i in stages[stage] if i.cmd == "USER"] == ["50000"]
        assert next(i.value for i in stages[stage] if i.cmd == "ENTRYPOINT") == ("airflow",)


def test_airflow_image_has_the_mesa_libraries_ci_installs(stages: dict[str, list[Any]]) -> None:
    setup = (REPO / ".ci" / "setup").read_text()
    wanted = set(re.findall(r"missing\+=\(([^)]*)\)", setup)[0].split()) | set(
        re.findall(r"missing\+=\(([^)]*)\)", setup)[1].split()
    )
    runs = " ".join(" ".join(i.value) for i in stages["airflow"] if i.cmd == "RUN")
    installed = set(shlex.split(runs.split("apt-get install", 1)[1].split("&&")[0])) - {
        "-y",
        "--no-install-recommends",
    }
    assert installed == wanted
    assert "https://download.pytorch.org/whl/cpu" in runs  # not PyPI's CUDA torch on CPU workers


def test_gpu_worker_image_dispatches_egl_to_the_nvidia_driver(stages: dict[str, list[Any]]) -> None:
    gpu = stages["gpu-worker"]
    runs = " ".join(" ".join(i.value) for i in gpu if i.cmd == "RUN")
    assert "/usr/share/glvnd/egl_vendor.d/10_nvidia.json" in runs and "libEGL_nvidia.so.0" in runs
    env = {k: v for i in gpu if i.cmd == "ENV" for k, v in zip(i.value[::2], i.value[1::2], strict=True)}
    assert "graphics" in env["NVIDIA_DRIVER_CAPABILITIES"].split(",")  # EGL needs the graphics libs
    assert env["GLASSFINDER_GL_PLATFORM"] == "egl"
    assert "download.pytorch.org/whl/cpu" not in runs
    assert list(next(i.value for i in gpu if i.cmd == "CMD")) == cluster.component_args(
        f"worker:{settings.GPU_QUEUE}"
    )


def test_compose_wires_a_celery_cluster_with_cpu_and_gpu_workers(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "seaweedfs", "airflow-init", *AIRFLOW_COMPONENTS} == set(services)
    for name, command in AIRFLOW_COMPONENTS.items():
        svc = services[name]
        assert svc["command"][: len(command)] == command, name
        env = svc["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")
        assert "@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
        assert env["AWS_ENDPOINT_URL"] == "http://seaweedfs:8333"
        # The first retry's pause, as `glassfinder airflow up` writes it (the DAGs leave it to Airflow).
        assert env["AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY"] == str(settings.DEFAULT_TASK_RETRY_DELAY_S)
        assert svc["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
        assert "healthcheck" in svc, name
        assert svc["build"]["target"] == ("gpu-worker" if name == "airflow-gpu-worker" else "airflow")
    queues = {
        n: s["command"][s["command"].index("--queues") + 1]
        for n, s in services.items()
        if "--queues" in s.get("command", [])
    }
    assert queues == {"airflow-worker": "default", "airflow-gpu-worker": settings.GPU_QUEUE}
    (device,) = services["airflow-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and {"gpu", "graphics"} <= set(device["capabilities"])
    init = " ".join(services["airflow-init"]["command"])
    assert "airflow db migrate" in init
    # Every pool the DAGs need is created by compose's init, as by `glassfinder airflow up`.
    from glassfinder.ops.deployment import REQUIRED_POOLS

    assert all(f"airflow pools set {pool} " in init for pool in REQUIRED_POOLS)
    assert "glassfinder store check --create-bucket" in init
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        if name in ("postgres", "redis", "seaweedfs"):
            assert "healthcheck" in svc and ":" in svc["image"] and not svc["image"].endswith(":latest")


def test_compose_refuses_to_start_without_its_secrets() -> None:
    text = (DOCKER / "compose.yaml").read_text()
    required = {m.group("name") for m in _VAR.finditer(text) if m.group("op") in (":?", "?")}
    assert required == {
        "AIRFLOW_FERNET_KEY",
        "AIRFLOW_JWT_SECRET",
        "POSTGRES_PASSWORD",
        "GLASSFINDER_S3_ACCESS_KEY",
        "GLASSFINDER_S3_SECRET_KEY",
    }
    assert required <= set(env_example())  # every secret is documented for the operator
    for name in required:
        env = {k: v for k, v in env_example().items() if k != name}
        with pytest.raises(KeyError, match=name):
            interpolate(text, env)
    assert not re.search(
        r"(?i)(secret|password)[\w]*:\s*['\"]?[A-Za-z0-9+/]{16,}", text
    )  # no literal secrets


def test_the_lock_pins_the_celery_executor_once() -> None:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"requirements.lock: {line!r} is not pinned with =="
            pins[name.lower().replace("_", "-")] = version
    assert {
        "apache-airflow-providers-celery",
        "celery",
        "kombu",
        "redis",
        "psycopg2-binary",
        "asyncpg",
    } <= set(pins)
    assert not (DOCKER / "requirements-cluster.txt").exists()  # one source of truth: the lock


def test_compose_runs_what_airflow_up_executor_celery_runs(compose: dict[str, Any]) -> None:
    """Same arguments per component and the same Celery settings as the one-machine cluster."""
    services = compose["services"]
    expected = {
        "airflow-apiserver": cluster.component_args("api-server", port=8080),
        "airflow-scheduler": cluster.component_args("scheduler"),
        "airflow-dag-processor": cluster.component_args("dag-processor"),
        "airflow-triggerer": cluster.component_args("triggerer"),
        "airflow-worker": cluster.component_args(f"worker:{settings.DEFAULT_QUEUE}"),
        "airflow-gpu-worker": cluster.component_args(f"worker:{settings.GPU_QUEUE}"),
    }
    for name, args in expected.items():
        assert services[name]["command"] == args, name
    env = services["airflow-worker"]["environment"]
    for section, values in cluster.celery_config("redis://redis:6379/0").items():
        for key, value in values.items():
            assert str(env[f"AIRFLOW__{section.upper()}__{key.upper()}"]) == str(value), (section, key)
