"""Dockerfile and docker-compose.yml, checked without Docker: services, commands, env names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pc2.service.cli_commands import PARSERS
from pc2.service.core.config import Settings
from pc2.service.core.queue import TASK_QUEUES

yaml = pytest.importorskip("yaml")
ROOT = Path(__file__).resolve().parents[2]
PC2_SERVICES = {"migrate", "api", "worker-cpu", "worker-gpu"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _function_and_rest(command: list[str]) -> tuple[str, list[str]]:
    """Parse with the real `pc2` parser, then name the service function it dispatches to."""
    from pc2.cli import build_parser

    args = build_parser().parse_args(command)
    words = 2 if command[0] in ("db", "keys") else 1
    return "_".join(command[:words]), args.rest


def test_services_present_with_healthchecks(compose):
    services = compose["services"]
    assert {"postgres", "redis"} | PC2_SERVICES <= set(services)
    for name in ("postgres", "redis", "api", "worker-cpu", "worker-gpu"):
        assert "healthcheck" in services[name], name
    assert services["migrate"]["restart"] == "no"
    for name in ("api", "worker-cpu", "worker-gpu"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert {"data", "pgdata"} <= set(compose["volumes"])
    for name in PC2_SERVICES:
        assert any(str(v).startswith("data:") for v in services[name]["volumes"]), name


def test_commands_are_real_pc2_subcommands(compose):
    for name in PC2_SERVICES:
        function, rest = _function_and_rest(compose["services"][name]["command"])
        assert function in PARSERS, (name, function)
        PARSERS[function]().parse_args(rest[1:] if rest[:1] == ["--"] else rest)  # exits on a bad option
    assert _function_and_rest(compose["services"]["migrate"]["command"])[0] == "db_upgrade"
    assert _function_and_rest(compose["services"]["api"]["command"])[0] == "serve"


def test_worker_queues_cover_every_task(compose):
    def queues(service: str) -> set[str]:
        cmd = compose["services"][service]["command"]
        return set(cmd[cmd.index("-Q") + 1].split(","))

    assert queues("worker-gpu") == {"gpu"}
    assert queues("worker-cpu") == {"cpu"}
    assert set(TASK_QUEUES.values()) <= queues("worker-gpu") | queues("worker-cpu")
    devices = compose["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_env_names_are_settings_fields(compose):
    fields = set(Settings.model_fields)
    for name, service in compose["services"].items():
        for key in service.get("environment") or {}:
            if key.startswith("PC2_"):
                assert key[4:] in fields, f"{name}: {key} is not a Settings field"
    env = compose["services"]["api"]["environment"]
    assert env["PC2_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["PC2_BROKER_URL"].startswith("redis://")
    # What compose would pass with no .env: ${NAME:-default} -> default.
    resolved = {k[4:]: re.sub(r"\$\{[A-Za-z0-9_]+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items() if k.startswith("PC2_")}
    settings = Settings(**resolved)
    assert settings.EMBEDDED is False and settings.MAX_UPLOAD_BYTES > 0


def test_dockerfile_multistage_non_root_with_base_image_arg():
    text = (ROOT / "Dockerfile").read_text()
    assert text.index("ARG BASE_IMAGE") < text.index("\nFROM ")
    stages = re.findall(r"^FROM\s+\$\{BASE_IMAGE\}\s+AS\s+(\w+)", text, re.M)
    assert len(stages) >= 2
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["pc2"]' in text
    cmd = re.search(r"^CMD\s+(\[.*\])", text, re.M).group(1)
    import json

    function, rest = _function_and_rest(json.loads(cmd))
    PARSERS[function]().parse_args(rest[1:] if rest[:1] == ["--"] else rest)
    assert "COPY --from=build /src/migrations /app/migrations" in text and "WORKDIR /app" in text
    for env in re.findall(r"\b(PC2_[A-Z_]+)=", text):
        assert env[4:] in Settings.model_fields, env
