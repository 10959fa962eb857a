"""What can be checked of the container setup and prefect.yaml without a Docker engine or a server.

These catch the mistakes that otherwise surface only at `docker compose up` on a GPU box: a COPY of a file
that is gone, a worker polling a pool no deployment targets, an unpinned image, a dependency on a service
that does not exist, an entrypoint that names a function that is not a flow.
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from actprm.servers import WORK_POOL

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu"]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def prefect_yaml() -> dict:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def _pinned(image: str) -> bool:
    # name:tag with a version-like tag (a digit in it), or a digest; never bare or :latest.
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and any(c.isdigit() for c in tag)


# -- compose ---------------------------------------------------------------------------------------------------
def test_compose_has_every_service_of_the_stack(compose):
    assert {"postgres", "prefect-server", "mlflow", "deploy", "worker", "vllm-judge"} <= set(compose["services"])


def test_every_image_is_pinned_and_every_build_has_its_dockerfile(compose):
    for name, svc in compose["services"].items():
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            context = (DOCKER / svc["build"]["context"]).resolve()
            assert (context / svc["build"]["dockerfile"]).is_file(), f"{name}: missing Dockerfile"
        elif not svc["image"].startswith("actprm:"):
            assert _pinned(svc["image"]), f"{name}: image {svc['image']!r} is not pinned to a version"
    # A service that reuses the local image needs some service to build it.
    built = {svc["image"] for svc in compose["services"].values() if "build" in svc}
    for name, svc in compose["services"].items():
        if svc.get("image", "").startswith("actprm:"):
            assert svc["image"] in built, f"{name}: nothing builds {svc['image']}"


def test_prefect_server_image_matches_the_locked_prefect(compose):
    lock = (REPO / "requirements.lock").read_text()
    prefect_version = re.search(r"^prefect==(\S+)$", lock, re.M).group(1)
    assert compose["services"]["prefect-server"]["image"].startswith(f"prefecthq/prefect:{prefect_version}-python3.11")


def test_depends_on_names_real_services_and_the_worker_waits_for_its_servers(compose):
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        for dep in deps:
            assert dep in services, f"{name} depends on unknown service {dep!r}"
    worker_deps = services["worker"]["depends_on"]
    assert worker_deps["prefect-server"]["condition"] == "service_healthy"
    assert worker_deps["mlflow"]["condition"] == "service_healthy"
    assert worker_deps["deploy"]["condition"] == "service_completed_successfully"
    for server in ("prefect-server", "mlflow", "postgres", "vllm-judge"):
        assert "healthcheck" in services[server], f"{server} has no healthcheck to wait on"


def test_ports_are_published_on_loopback_only(compose):
    published = {}
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            host_ip, host_port, container_port = str(port).split(":")
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"
            published[name] = (int(host_port), int(container_port))
    assert published["prefect-server"] == (4200, 4200)
    assert published["mlflow"] == (5000, 5000)
    assert published["vllm-judge"] == (8000, 8000)


def test_workers_reach_the_servers_and_the_judge_by_service_name(compose):
    services = compose["services"]
    vllm_args = " ".join(services["vllm-judge"]["command"])
    vllm_port = re.search(r"--port[= ](\d+)", vllm_args).group(1)
    served = re.search(r"--served-model-name[= ](\S+)", vllm_args).group(1)
    for name in ("worker", "worker-gpu", "deploy"):
        env = services[name]["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert env["MLFLOW_TRACKING_URI"] == env["ACTPRM_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["ACTPRM_JUDGE__URL"] == f"http://vllm-judge:{vllm_port}/v1"
        assert env["ACTPRM_JUDGE__MODEL"] == served


def test_mounted_files_exist(compose):
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith((".", "/")):
                assert (DOCKER / source).resolve().exists(), f"{name} mounts missing {source}"


# -- Dockerfiles -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_base_is_pinned_and_copies_only_existing_files(dockerfile):
    instructions = _instructions(dockerfile)
    bases = [args.split()[0] for op, args in instructions if op == "FROM"]
    assert bases and all(_pinned(b) for b in bases), bases
    for op, args in instructions:
        if op == "COPY":
            *sources, _dest = shlex.split(args)
            for src in sources:
                if not src.startswith("--"):
                    assert (REPO / src).exists(), f"{dockerfile.name}: COPY {src} does not exist in the repo"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_the_locked_torch_and_runs_the_worker_on_the_deployments_pool(dockerfile, prefect_yaml):
    text = dockerfile.read_text()
    lock_torch = re.search(r"^torch==(\S+)$", (REPO / "requirements.lock").read_text(), re.M).group(1)
    assert f"torch=={lock_torch}" in text and "download.pytorch.org/whl/" in text
    assert "requirements.lock" in text
    entrypoint = next(args for op, args in _instructions(dockerfile) if op == "ENTRYPOINT")
    argv = yaml.safe_load(entrypoint)  # JSON exec form
    assert argv[:3] == ["prefect", "worker", "start"]
    pool = argv[argv.index("--pool") + 1]
    assert pool == WORK_POOL
    assert {d["work_pool"]["name"] for d in prefect_yaml["deployments"]} == {pool}
    # prefect.yaml's pull step reads ACTPRM_REPO: it must be where the image puts the code.
    workdir = next(args for op, args in _instructions(dockerfile) if op == "WORKDIR")
    assert re.search(rf"ACTPRM_REPO={re.escape(workdir)}\b", text)


# -- prefect.yaml ----------------------------------------------------------------------------------------------
def test_prefect_yaml_is_valid_for_prefect(prefect_yaml):
    from prefect.cli.deploy._models import PrefectYamlModel, RawScheduleConfig
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers

    model = PrefectYamlModel.model_validate(prefect_yaml)
    assert len(model.deployments) == len(prefect_yaml["deployments"]) >= 4
    for d in prefect_yaml["deployments"]:
        for schedule in d.get("schedules") or []:
            RawScheduleConfig.model_validate(schedule)
        # The same validation `prefect deploy` applies to trigger specs.
        _initialize_deployment_triggers(d["name"], [dict(t) for t in d.get("triggers") or []])
    assert model.pull == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $ACTPRM_REPO }}"}}]


def test_every_entrypoint_names_a_flow_function_that_exists(prefect_yaml):
    for d in prefect_yaml["deployments"]:
        path, _, func = d["entrypoint"].partition(":")
        source = REPO / path
        assert source.is_file(), f"{d['name']}: {path} does not exist"
        tree = ast.parse(source.read_text())
        defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        assert func in defs, f"{d['name']}: {path} defines no function {func}"
        decorators = [ast.unparse(dec) for dec in defs[func].decorator_list]
        assert any(dec.startswith(("flow", "prefect.flow")) for dec in decorators), f"{func} is not a @flow"


def test_serve_and_stop_scripts_parse_and_are_executable():
    for script in ("serve.sh", "stop.sh"):
        path = REPO / "scripts" / script
        assert path.stat().st_mode & 0o111, f"{script} is not executable"
        subprocess.run(["bash", "-n", str(path)], check=True)
