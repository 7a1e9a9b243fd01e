"""Deployment files: Dockerfile.gpu against pyproject.toml, docker-compose.yml's services and
their shell wrappers, and, where `docker-compose` is installed, a real compose validation."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import REPO

DOCKERFILE = REPO / "Dockerfile.gpu"
COMPOSE = REPO / "docker-compose.yml"
# The extras the server image needs: the CUDA kernels, training (torchrun runs in the same
# image) and the server.
IMAGE_EXTRAS = {"gpu", "train", "server"}
# The server's settings, as docs/DEPLOY.md lists them.
SERVER_SETTINGS = [
    "PLAYMODEL_CHECKPOINT",
    "PLAYMODEL_DEVICE",
    "PLAYMODEL_TICK_RATE",
    "PLAYMODEL_MAX_SESSIONS",
    "PLAYMODEL_INPUT_DELAY",
    "PLAYMODEL_IDLE_TIMEOUT",
    "PLAYMODEL_API_KEY",
    "PLAYMODEL_REPLAY_DIR",
    "PLAYMODEL_RECORDINGS_DIR",
]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continued lines joined."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [
        (parts[0].upper(), parts[1] if len(parts) > 1 else "")
        for parts in (line.strip().split(None, 1) for line in joined.splitlines())
        if parts
    ]


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def build_args(instructions) -> dict[str, str]:
    """ARG defaults of the Dockerfile."""
    args = {}
    for name, value in instructions:
        if name == "ARG" and "=" in value:
            key, default = value.split("=", 1)
            args[key] = default
    return args


def expand(text: str, variables: dict[str, str]) -> str:
    """Substitute ${NAME} and $NAME the way Docker does for build arguments."""
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)",
        lambda m: variables.get(m.group(1) or m.group(2), m.group(0)),
        text,
    )


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_dockerfile_installs_the_extras_the_image_needs(instructions, build_args):
    optional = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    installed: set[str] = set()
    for name, value in instructions:
        if name == "RUN" and "pip install" in value:
            for group in re.findall(r"\.\[([^\]]+)\]", expand(value, build_args)):
                installed.update(extra.strip() for extra in group.split(","))
    assert installed >= IMAGE_EXTRAS, f"Dockerfile.gpu installs extras {sorted(installed)}"
    unknown = installed - set(optional)
    assert not unknown, f"Dockerfile.gpu names extras pyproject.toml lacks: {sorted(unknown)}"


def test_dockerfile_builds_the_kernels_against_the_image_torch(instructions):
    pip_installs = [v for n, v in instructions if n == "RUN" and "pip install" in v]
    project_installs = [v for v in pip_installs if "-e " in v or "-r " in v]
    assert project_installs, "no pip install of the project or its requirements"
    for command in project_installs:
        assert "--no-build-isolation" in command, command
    # The torch pin is an environment variable so that every later pip call obeys it.
    env = " ".join(v for n, v in instructions if n == "ENV")
    assert "PIP_CONSTRAINT=" in env
    constraint = next(v for n, v in instructions if n == "RUN" and "pip-constraints" in v)
    # The installed distribution's version: torch.__version__ of PyPI's wheels has a local
    # label (+cu128) that their metadata lacks, and pip then refuses the pin.
    assert "version('torch')" in constraint


def test_dockerfile_base_is_a_pinned_pytorch_cuda_devel_image(instructions, build_args):
    base = expand(next(v for n, v in instructions if n == "FROM"), build_args)
    image, _, tag = base.partition(":")
    assert image == "pytorch/pytorch", base
    # devel: nvcc is there, so the kernels can be compiled when no wheel matches.
    assert re.fullmatch(r"\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-devel", tag), base


def test_dockerfile_runs_as_a_non_root_user(instructions):
    users = [v for n, v in instructions if n == "USER"]
    assert users, "Dockerfile.gpu never leaves root"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_healthcheck_targets_healthz_on_the_served_port(instructions):
    healthcheck = next(v for n, v in instructions if n == "HEALTHCHECK")
    assert "/healthz" in healthcheck
    port = re.search(r"localhost:(\d+)/healthz", healthcheck).group(1)
    exposed = [v for n, v in instructions if n == "EXPOSE"]
    assert exposed == [port]
    command = next(v for n, v in instructions if n == "CMD")
    assert command.startswith("["), "CMD in exec form, so that signals reach the server"
    argv = json.loads(command)
    assert argv[:2] == ["playmodel", "serve"]
    assert argv[argv.index("--port") + 1] == port
    assert argv[argv.index("--host") + 1] == "0.0.0.0"


def test_compose_services_build_from_the_dockerfile(compose):
    services = compose["services"]
    assert set(services) >= {"server", "train", "parse"}
    for name in ("server", "train", "parse"):
        build = services[name]["build"]
        assert build["dockerfile"] == "Dockerfile.gpu", name
        assert (REPO / build["context"] / build["dockerfile"]).exists()
    # The server starts by default; training and ingestion only when their profile is asked.
    assert "profiles" not in services["server"]
    assert services["train"]["profiles"] == ["train"]
    assert services["parse"]["profiles"] == ["parse"]


def test_compose_reserves_every_gpu_for_server_and_train(compose):
    for name in ("server", "train"):
        devices = compose["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}], name


def test_compose_server_has_port_volume_settings_and_restart(compose):
    server = compose["services"]["server"]
    assert any(p.endswith(":8000") for p in server["ports"])
    assert any(v.endswith(":/data") for v in server["volumes"])
    assert server["restart"] == "unless-stopped"
    missing = [key for key in SERVER_SETTINGS if key not in server["environment"]]
    assert not missing, f"docker-compose.yml does not pass {missing} to the server"
    # Without a configured checkpoint the variable stays unset, so the bundled one is used.
    assert server["environment"]["PLAYMODEL_CHECKPOINT"] is None


def test_deploy_doc_lists_the_settings_compose_passes():
    doc = (REPO / "docs" / "DEPLOY.md").read_text()
    missing = [key for key in SERVER_SETTINGS if key not in doc]
    assert not missing, f"docs/DEPLOY.md does not document {missing}"


def service_script(compose: dict, name: str, data: Path) -> str:
    """The `sh -c` script of a service as the container runs it: compose turns `$$` into `$`;
    /data is moved to `data`."""
    command = compose["services"][name]["command"]
    assert command[:2] == ["sh", "-c"], command
    script = command[2]
    # A single `$` would be replaced by compose from the host's variables, not by the shell.
    assert not re.search(r"(?<!\$)\$(?!\$)", script.replace("$$", "")), script
    return re.sub(r"(?<![\w/])/data(?=/)", str(data), script.replace("$$", "$"))


def run_with_fake(tool: str, script: str, tmp_path: Path, env: dict[str, str]) -> list[str]:
    """Run `script` with `tool` replaced by a stub that prints its arguments, one a line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / tool
    stub.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    stub.chmod(0o755)
    result = subprocess.run(
        ["sh", "-c", script],
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in result.stdout.splitlines() if not line.startswith("resuming")]


def test_train_service_resumes_only_a_run_with_a_checkpoint(compose, tmp_path):
    script = service_script(compose, "train", tmp_path)
    env = {"RUN_NAME": "large", "TRAIN_CONFIG": "large-gpu", "TRAIN_ARGS": "--max-steps 5"}
    fresh = run_with_fake("torchrun", script, tmp_path, env)
    run_dir = tmp_path / "runs" / "large"
    assert fresh == [
        "--standalone",
        "--nproc-per-node=gpu",
        "-m",
        "training",
        "train",
        "--config",
        "large-gpu",
        "--data",
        str(tmp_path / "dataset"),
        "--out",
        str(run_dir),
        "--max-steps",
        "5",
    ]
    # A folder without a checkpoint (killed before its first save) starts afresh too.
    run_dir.mkdir(parents=True)
    assert run_with_fake("torchrun", script, tmp_path, env) == fresh
    (run_dir / "last.state.pt").write_bytes(b"")
    resumed = run_with_fake("torchrun", script, tmp_path, env)
    assert resumed == [*fresh[:-2], "--resume", *fresh[-2:]]


def test_parse_service_ingests_the_mounted_replays(compose, tmp_path):
    script = service_script(compose, "parse", tmp_path)
    args = run_with_fake("playmodel", script, tmp_path, {"PARSE_WORKERS": "3"})
    assert args == [
        "parse",
        str(tmp_path / "replays"),
        "--out",
        str(tmp_path / "dataset"),
        "--workers",
        "3",
    ]
    default = run_with_fake("playmodel", script, tmp_path, {})
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout
    assert default[-2:] == ["--workers", nproc.strip()]


def test_the_commands_compose_runs_exist():
    """The flags the train and parse services pass are the ones the entry points take."""
    from training import ingest, train

    parse_help = ingest.build_parser().format_help()
    train_help = train.build_parser().format_help()
    for flag in ("--out", "--workers"):
        assert flag in parse_help
    for flag in ("--config", "--data", "--out", "--resume", "--max-steps"):
        assert flag in train_help
    assert (REPO / "training" / "configs" / "large-gpu.yaml").exists()


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
@pytest.mark.parametrize("profiles", ["", "--profile train --profile parse"])
def test_docker_compose_accepts_the_file(profiles):
    command = ["docker-compose", "-f", str(COMPOSE), *shlex.split(profiles), "config", "-q"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- deploy/check-image.sh
# The image check itself needs podman and a long build (docs/DEPLOY.md, "Checking the image");
# these tests run what of it works without them: its plan, and its client against the server.
CHECK = REPO / "deploy" / "check-image.sh"


def test_check_image_script_parses_and_plans_a_build_from_dockerfile_gpu(build_args):
    subprocess.run(["bash", "-n", str(CHECK)], check=True)
    plan = subprocess.run([str(CHECK), "--plan"], capture_output=True, text=True, check=True)
    planned = dict(line.split(" ", 1) for line in plan.stdout.splitlines())
    # The stand-in base carries the torch release of the real base's tag.
    torch_version = planned["torch"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", torch_version), plan.stdout
    assert f":{torch_version}-" in build_args["BASE_IMAGE"]
    assert planned["base"].endswith(f":torch{torch_version}")
    # docker-compose.yml runs the image the check builds.
    compose_image = yaml.safe_load(COMPOSE.read_text())["services"]["server"]["image"]
    assert planned["image"] == f"localhost/{compose_image}"


def test_check_image_smoke_client_plays_a_session_and_a_match(tmp_path):
    """deploy/smoke.py, which the check runs inside the image, against the real server."""
    from server.serve import ServerThread
    from server.settings import ServerSettings

    settings = ServerSettings(port=0, api_key="smoke-key", recordings_dir=tmp_path)
    with ServerThread(settings) as server:
        result = subprocess.run(
            [
                *(sys.executable, str(REPO / "deploy" / "smoke.py"), server.url),
                *("--api-key", "smoke-key", "--wait", "30"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("smoke: ok")
    # The session's game and the match are both recorded.
    assert len(list(tmp_path.glob("*/game.parquet"))) == 2
