"""End to end: deploy claude-cluster with deploy-cluster.sh onto booted hosts, then prove it.

Boots systemd-nspawn hosts on the bridge ccbr0 (deploy/testhosts/testhosts.sh; its
TESTHOSTS_* variables move them to another bridge, subnet and work directory): h1 is the
coordinator (native mode: Debian's PostgreSQL and Redis), h2/h3 are agents, h4 is added
later with add-agent.sh. The hosts reach apt through an apt-cacher-ng proxy on the control
node and PyPI not at all, so the wheelhouse is built here (build-wheelhouse.sh). Every check
runs from the control node, as an operator would. The hosts boot once for the module and are
always torn down (fixture finalizer and atexit), even when a test fails.

Needs root, systemd-nspawn, debootstrap, apt-cacher-ng and openssh-client; the Debian
packages prometheus/prometheus-alertmanager are only needed by test_static.py.
Run: uv run pytest tests/deploy -m deploy
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import ANSIBLE_DIR, REPO, SCRIPTS, TESTHOSTS, run, tool_env

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(900)]

# The hosts' subnet: testhosts.sh's TESTHOSTS_NET (another set of hosts may use the default).
NET = os.environ.get("TESTHOSTS_NET", "10.77.0")
COORDINATOR_IP = f"{NET}.11"
AGENTS = {"agent-001": (f"{NET}.12", "h2", "backend"), "agent-002": (f"{NET}.13", "h3", "frontend")}
NEW_AGENT = ("agent-003", f"{NET}.14", "h4", "testing")
ADMIN_TOKEN = "e2e-admin-token-0123456789abcdef"
# The name in the stand-in public certificate of the proxy mode's webhook endpoint.
PUBLIC_NAME = "hooks.e2e.test"
CACHE = Path(os.environ.get("TESTHOSTS_CACHE", "/var/cache/claude-cluster-testhosts"))
REPO_ON_AGENTS = "/srv/e2e-repo"
# On issue 2 the e2e command runner marks its repository with WAITING and waits (up to
# HELD_SECONDS) until the test puts RELEASE beside it: a run that is still going however
# long the upgrade test's coordinator play takes on a busy machine.
SLOW_ISSUE, HELD_SECONDS, WAITING, RELEASE = 2, 900, ".e2e-waiting", ".e2e-release"
HOST_CA = "/etc/claude-cluster/tls/ca.crt"
# Each run's script outputs (with per-task timings), kept after the run for a look.
LOGS = Path(os.environ.get("DEPLOY_E2E_LOGS", "/var/tmp/claude-cluster-e2e-logs"))


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the deployment test boots nspawn hosts and needs root"
    missing = [
        pkg
        for tool, pkg in [
            ("systemd-nspawn", "systemd-container"),
            ("debootstrap", "debootstrap"),
            ("ssh", "openssh-client"),
            ("rsync", "rsync"),
        ]
        if shutil.which(tool) is None
    ]
    if not Path("/usr/sbin/apt-cacher-ng").exists():
        missing.append("apt-cacher-ng")
    if missing:
        return f"missing host tools: apt-get install {' '.join(missing)}"
    return None


if (_reason := _skip_reason()) is not None:
    pytest.skip(_reason, allow_module_level=True)


@dataclass
class Cluster:
    inventory: Path
    logs: Path
    work: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ca(self) -> Path:
        """The cluster CA the deployment made next to the inventory."""
        return self.inventory.parent / "pki" / "ca.crt"

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def testhosts(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run([str(TESTHOSTS), *args], cwd=REPO, timeout=timeout)

    def ssh(self, host: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.testhosts("ssh", host, command, timeout=timeout)

    def script(
        self, name: str, *args: str, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run a deploy script; keep its output in the log directory."""
        started = time.monotonic()
        # profile_tasks puts each task's duration into the logs.
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


def _write_inventory(directory: Path, wheelhouse: Path) -> Path:
    key = CACHE / "id_ed25519"
    agents = "\n".join(
        f"{name} ansible_host={ip} agent_specialty={specialty}"
        for name, (ip, _, specialty) in AGENTS.items()
    )
    directory.mkdir(parents=True, exist_ok=True)
    hosts = directory / "hosts.ini"
    hosts.write_text(
        f"""[coordinators]
coordinator ansible_host={COORDINATOR_IP}

[agents]
{agents}

[cluster:children]
coordinators
agents

[cluster:vars]
ansible_user=claude
ansible_ssh_private_key_file={key}
ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'
ansible_python_interpreter=/usr/bin/python3
"""
    )
    group_vars = directory / "group_vars/all"
    group_vars.mkdir(parents=True)
    # The project's cluster-wide settings, then the test's secrets and overrides after them.
    (group_vars / "main.yml").symlink_to(ANSIBLE_DIR / "inventory/group_vars/all/main.yml")
    (group_vars / "vault.yml").write_text(
        f"""---
vault_postgres_password: e2e-pg-0123456789
vault_coordinator_secret_key: e2e-secret-key-0123456789abcdef
vault_coordinator_admin_token: {ADMIN_TOKEN}
vault_agent_registration_token: e2e-registration-0123456789abcdef
vault_github_token: ghp_e2e0123456789abcdef
vault_github_webhook_secret: e2e-webhook-0123456789
vault_redis_password: e2e-redis-0123456789abcdef
vault_metrics_token: e2e-metrics-0123456789abcdef
vault_cluster_ca_passphrase: e2e-ca-passphrase-0123456789
"""
    )
    (group_vars / "zz-e2e.yml").write_text(
        f"""---
# Test-only settings: the hosts have no internet, 2 cores and a few GB.
claude_cluster_wheelhouse_src: {wheelhouse}
common_connectivity_urls: ["http://{NET}.1:3142/"]
common_requirements:
  coordinators: {{vcpus: 1, memory_mb: 1000, disk_free_gb: 5}}
  agents: {{vcpus: 1, memory_mb: 1000, disk_free_gb: 5}}
devtools_nodejs_source: distro
devtools_nodejs_packages_distro: [nodejs]
monitoring_grafana_enabled: false
coordinator_workers: 2
agent_runner: command
agent_command: >-
  /bin/sh -c 'if [ "$CLUSTER_ISSUE_NUMBER" = {SLOW_ISSUE} ]; then touch {WAITING}; i=0;
  while [ ! -e {RELEASE} ] && [ $i -lt {HELD_SECONDS} ]; do sleep 1; i=$((i+1)); done;
  rm -f {WAITING} {RELEASE}; fi;
  echo deployed-by-e2e > E2E_RESULT.txt'
coordinator_backup_keep: 1
# the runs push to a repository on the agent host, outside the unit's writable layout
agent_read_write_paths: ["{REPO_ON_AGENTS}"]
"""
    )
    return hosts


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("e2e")
    logs = LOGS
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    started = time.monotonic()
    # This run's own wheelhouse: another test run on the machine may rebuild a shared one
    # between two deploys, and the second would then not be idempotent.
    wheelhouse = work / "wheelhouse"
    built = run(
        [str(SCRIPTS / "build-wheelhouse.sh"), "-o", str(wheelhouse)], cwd=REPO, timeout=600
    )
    assert built.returncode == 0, built.stdout[-4000:]
    inventory = _write_inventory(work / "inventory", wheelhouse)
    cluster = Cluster(inventory=inventory, logs=logs, work=work)
    cluster.timings["build wheelhouse"] = time.monotonic() - started

    def teardown() -> None:
        run([str(TESTHOSTS), "down"], cwd=REPO, timeout=120)

    cluster.testhosts("down")  # leftovers of an interrupted run
    atexit.register(teardown)
    try:
        started = time.monotonic()
        prepared = cluster.testhosts("prepare", timeout=600)
        assert prepared.returncode == 0, prepared.stdout[-4000:]
        cluster.timings["prepare rootfs"] = time.monotonic() - started
        started = time.monotonic()
        booted = cluster.testhosts("up", "h1", "h2", "h3")
        assert booted.returncode == 0, booted.stdout[-4000:]
        cluster.timings["boot 3 hosts"] = time.monotonic() - started
        yield cluster
    finally:
        started = time.monotonic()
        teardown()
        atexit.unregister(teardown)
        cluster.timings["teardown"] = time.monotonic() - started
        summary = ", ".join(f"{k}: {v:.0f}s" for k, v in cluster.timings.items())
        print(f"\ndeploy e2e timings: {summary}\nlogs: {logs}")


def _recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP counters per host (the last recap in the output wins)."""
    recap: dict[str, dict[str, int]] = {}
    for host, counters in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.MULTILINE):
        recap[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counters)}
    return recap


def _get(url: str, context: ssl.SSLContext | None = None) -> int:
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        return int(response.status)


def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _wait_for(predicate: Any, timeout: float, interval: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# A cluster's api(method, path, body=None): the coordinator's JSON answer to the admin.
Api = Callable[..., Any]


def _agents(api: Api) -> dict[str, dict[str, Any]]:
    return {a["id"]: a for a in api("GET", "/api/v1/agents")}


def wait_until_enrolled(api: Api, names: Collection[str], timeout: float = 90) -> bool:
    """Whether every agent of names is registered with the coordinator within timeout."""
    return bool(_wait_for(lambda: set(names) <= set(_agents(api)), timeout, interval=2))


def wait_for_accepted_heartbeats(
    api: Api, names: Collection[str], timeout: float = 90
) -> dict[str, dict[str, Any]] | None:
    """The agents once the coordinator has accepted a heartbeat of each of names since this
    call (None when one has not within timeout).

    An agent's last_heartbeat moves only when the coordinator accepts its heartbeat or its
    registration, both of which want the agent's own token (or the registration token for an
    id it does not know yet). An agent whose token it refuses is locked out and leaves the
    row as it was, although the row may still say "idle" for a while (a restored one does)."""
    seen = {name: agent["last_heartbeat"] for name, agent in _agents(api).items()}

    def accepted() -> dict[str, dict[str, Any]] | None:
        agents = _agents(api)
        back = all(
            name in agents
            and agents[name]["last_heartbeat"] != seen.get(name)
            and agents[name]["status"] not in ("offline", "error")
            for name in names
        )
        return agents if back else None

    agents: dict[str, dict[str, Any]] | None = _wait_for(accepted, timeout, interval=3)
    return agents


def test_first_deploy_succeeds(cluster: Cluster) -> None:
    proc = cluster.script("deploy-cluster.sh", "-i", str(cluster.inventory))
    assert proc.returncode == 0, proc.stdout[-8000:]
    recap = _recap(proc.stdout)
    assert set(recap) == {"coordinator", *AGENTS}
    assert all(c["failed"] == 0 and c["unreachable"] == 0 for c in recap.values()), recap
    # The access points come from the inventory, not the document's hard-coded addresses.
    assert f"https://{COORDINATOR_IP}:8080" in proc.stdout
    assert "192.168.1.100" not in proc.stdout


def test_coordinator_serves_https_verified_by_the_cluster_ca(cluster: Cluster) -> None:
    url = f"https://{COORDINATOR_IP}:8080/health"
    with urllib.request.urlopen(url, timeout=10, context=cluster.tls()) as response:
        assert response.status == 200
        assert json.loads(response.read())["status"] == "healthy"
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        _get(url)  # the system store does not know the cluster CA
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        _get(f"http://{COORDINATOR_IP}:8080/health")  # no clear text
    # The CA key on the control node is encrypted with the vault's passphrase.
    assert "ENCRYPTED" in (cluster.ca.parent / "ca.key").read_text()


def test_both_agents_registered_and_healthy(cluster: Cluster) -> None:
    agents = {a["id"]: a for a in cluster.api("GET", "/api/v1/agents")}
    assert set(AGENTS) <= set(agents)
    for name in AGENTS:
        assert agents[name]["status"] not in ("offline", "error"), agents[name]
        assert agents[name]["last_heartbeat"]
        # the sandbox canary passed on the booted host, as the agent user under the unit
        configuration = agents[name]["configuration"]
        assert configuration["sandbox"] == "on" and configuration["ready"] is True, configuration
        assert agents[name]["status"] != "maintenance", agents[name]
    for name, (ip, _, _) in AGENTS.items():
        assert agents[name]["url"] == f"https://{ip}:8081"
        proc = cluster.ssh("h1", f"curl -fsS -m 5 --cacert {HOST_CA} https://{ip}:8081/health")
        assert proc.returncode == 0, f"{name}: {proc.stdout}"


def test_postgres_and_redis_are_closed_from_outside(cluster: Cluster) -> None:
    for port in (5432, 6379):
        assert not _reachable(COORDINATOR_IP, port), f"{port} is reachable from the control node"
    # ... while they serve the coordinator on its loopback; Redis only with its password.
    assert cluster.ssh("h1", "pg_isready -q -h 127.0.0.1 -p 5432").returncode == 0
    assert "NOAUTH" in cluster.ssh("h1", "redis-cli -h 127.0.0.1 ping").stdout
    authed = cluster.ssh(
        "h1", "REDISCLI_AUTH=e2e-redis-0123456789abcdef redis-cli -h 127.0.0.1 ping"
    )
    assert "PONG" in authed.stdout
    status = cluster.ssh("h1", "ufw status").stdout
    assert "Status: active" in status
    assert re.search(r"^22(/tcp)?\s+ALLOW\s+Anywhere", status, re.MULTILINE), status
    # 8080 and 3000: the inventory's hosts and the control node (the operator), nobody else.
    for port in ("8080", "3000"):
        sources = set(re.findall(rf"^{port}/tcp\s+ALLOW\s+(\S+)", status, re.MULTILINE))
        assert sources == {COORDINATOR_IP, *(ip for ip, _, _ in AGENTS.values()), f"{NET}.1"}, (
            status
        )


def test_agent_port_only_from_the_coordinator(cluster: Cluster) -> None:
    ip_001 = AGENTS["agent-001"][0]
    assert not _reachable(ip_001, 8081), "8081 is reachable from the control node"
    curl = f"curl -fsS -m 4 --cacert {HOST_CA} https://{ip_001}:8081/health"
    from_other_agent = cluster.ssh("h3", curl)
    assert from_other_agent.returncode != 0, "8081 is reachable from another agent"
    from_coordinator = cluster.ssh("h1", curl)
    assert from_coordinator.returncode == 0, from_coordinator.stdout


def test_a_task_runs_to_completion_on_a_deployed_agent(cluster: Cluster) -> None:
    for _, host, _ in AGENTS.values():
        created = cluster.ssh(
            host,
            f"set -e; install -d -o agent -g agent {REPO_ON_AGENTS}; cd {REPO_ON_AGENTS};"
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
            "title": "Write the e2e marker file",
            "description": "The command runner writes E2E_RESULT.txt.",
            "github_repository": REPO_ON_AGENTS,
            "github_issue_number": 1,
        },
    )
    terminal = {"completed", "failed", "cancelled"}

    def finished() -> dict[str, Any] | None:
        current: dict[str, Any] = cluster.api("GET", f"/api/v1/tasks/{task['id']}")
        return current if current["status"] in terminal else None

    result = _wait_for(finished, timeout=180)
    cluster.timings["task to completion"] = time.monotonic() - started
    last = cluster.api("GET", f"/api/v1/tasks/{task['id']}")
    assert result, f"task {task['id']} did not finish: {last}"
    runs = cluster.api("GET", f"/api/v1/tasks/{task['id']}/runs")
    assert result["status"] == "completed", (result.get("error_message"), runs)
    branch = result["github_branch"]
    assert branch
    # The run's branch was pushed to the repository on the agent that ran it, with the file.
    shown = [
        cluster.ssh(host, f"cd {REPO_ON_AGENTS} && sudo -u agent git show {branch}:E2E_RESULT.txt")
        for _, host, _ in AGENTS.values()
    ]
    assert any("deployed-by-e2e" in p.stdout for p in shown if p.returncode == 0), [
        p.stdout for p in shown
    ]


def test_prometheus_scrapes_the_coordinator_and_the_agents(cluster: Cluster) -> None:
    def targets() -> dict[str, str] | None:
        proc = cluster.ssh("h1", "curl -fsS -m 5 http://127.0.0.1:9090/api/v1/targets")
        if proc.returncode != 0:
            return None
        active = json.loads(proc.stdout)["data"]["activeTargets"]
        health = {f"{t['labels']['job']}/{t['labels']['instance']}": t["health"] for t in active}
        wanted = ["claude-coordinator/coordinator", *(f"claude-agents/{a}" for a in AGENTS)]
        return health if all(health.get(w) == "up" for w in wanted) else None

    assert _wait_for(targets, timeout=60, interval=3), cluster.ssh(
        "h1", "curl -s http://127.0.0.1:9090/api/v1/targets"
    ).stdout[-3000:]
    assert not _reachable(COORDINATOR_IP, 9090), "Prometheus is reachable from the control node"
    # The metrics token is a file only Prometheus (and root) reads.
    token = cluster.ssh("h1", "stat -c '%a %U %G' /etc/prometheus/metrics-token").stdout.split()
    assert token == ["640", "root", "prometheus"]


def test_deployed_settings_are_private_and_agents_unprivileged(cluster: Cluster) -> None:
    coordinator_env = cluster.ssh("h1", "stat -c '%a %U' /opt/coordinator/.env").stdout.split()
    assert coordinator_env == ["600", "coordinator"]
    for _, host, _ in AGENTS.values():
        assert cluster.ssh(host, "stat -c '%a %U %G' /opt/agent/.env").stdout.split() == [
            "640",
            "root",
            "agent",
        ]
        # the agent user cannot change its code, venv or settings
        for path in ("/opt/agent", "/opt/agent/venv", "/opt/agent/.env"):
            probe = cluster.ssh(host, f"runuser -u agent -- test -w {path} && echo writable")
            assert "writable" not in probe.stdout, path
        groups = cluster.ssh(host, "id -nG agent").stdout.split()
        assert "docker" not in groups, groups
        unit = cluster.ssh(
            host, "systemctl show claude-agent -p KillMode -p TimeoutStopUSec"
        ).stdout
        assert "KillMode=mixed" in unit
        assert "TimeoutStopUSec=infinity" not in unit
        hardening = cluster.ssh(
            host, "systemctl show claude-agent -p ProtectSystem -p ProtectHome -p NoNewPrivileges"
        ).stdout
        assert "ProtectSystem=strict" in hardening and "NoNewPrivileges=yes" in hardening
        assert cluster.ssh(host, "systemctl is-active claude-agent").stdout.strip() == "active"


def test_second_deploy_changes_nothing(cluster: Cluster) -> None:
    # State a redeploy must never wipe (the document's rsync --delete did).
    markers = {
        "h1": ["/opt/coordinator/data", "/opt/coordinator/backup", "/opt/coordinator/logs"],
        "h2": ["/opt/agent/workspace", "/opt/agent/cache"],
    }
    for host, dirs in markers.items():
        touch = " && ".join(f"touch {d}/keep-me" for d in dirs)
        assert cluster.ssh(host, touch).returncode == 0
    proc = cluster.script("deploy-cluster.sh", "-i", str(cluster.inventory))
    assert proc.returncode == 0, proc.stdout[-8000:]
    recap = _recap(proc.stdout)
    changed = {host: c["changed"] for host, c in recap.items() if c["changed"]}
    assert not changed, (
        f"not idempotent: {changed}\n"
        + "\n".join(
            line for line in proc.stdout.splitlines() if line.startswith(("changed:", "TASK"))
        )[-6000:]
    )
    for host, dirs in markers.items():
        for d in dirs:
            assert cluster.ssh(host, f"test -f {d}/keep-me").returncode == 0, f"{host}:{d} wiped"


def _changed_tasks(output: str) -> set[str]:
    """Names of the tasks that reported "changed" on some host."""
    tasks, current = set(), ""
    for line in output.splitlines():
        if line.startswith("TASK ["):
            current = line[6 : line.index("]")]
        elif line.startswith("changed:"):
            tasks.add(current)
    return tasks


def test_check_mode_runs_and_changes_nothing(cluster: Cluster) -> None:
    proc = cluster.script("deploy-cluster.sh", "-i", str(cluster.inventory), "-c")
    assert proc.returncode == 0, proc.stdout[-8000:]
    assert "Check mode finished" in proc.stdout
    # community.general.ufw guesses in check mode by diffing `ufw --dry-run` output with the
    # current rules, and reports some existing port rules as changes; everything else must
    # report nothing (the real second run above proves the rules are unchanged).
    changed = {t for t in _changed_tasks(proc.stdout) if "firewall" not in t and "reach" not in t}
    assert not changed, changed


def _cert_serials(cluster: Cluster) -> dict[str, str]:
    serials = {}
    for name, host in [("coordinator", "h1"), *((n, h) for n, (_, h, _) in AGENTS.items())]:
        proc = cluster.ssh(
            host, f"openssl x509 -noout -serial -in /etc/claude-cluster/tls/{name}.crt"
        )
        assert proc.returncode == 0, proc.stdout
        serials[name] = proc.stdout.strip()
    return serials


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _next_version_wheelhouse(cluster: Cluster) -> Path:
    """The wheelhouse with the project wheel rebuilt as version 0.1.1 (N+1)."""
    return next_version_wheelhouse(cluster.work / "wheelhouse", cluster.work)


def next_version_wheelhouse(current: Path, work: Path) -> Path:
    """A copy of the wheelhouse current, in work, with the project wheel rebuilt as 0.1.1."""
    source, wheelhouse = work / "src", work / "wheelhouse-next"
    if wheelhouse.exists():
        return wheelhouse
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "dist", "__pycache__", ".*_cache", "*.egg-info", ".data"
        ),
    )
    for path in (source / "pyproject.toml", source / "src/claude_cluster/__init__.py"):
        path.write_text(
            re.sub(
                r'version = "0\.1\.0"|__version__ = "0\.1\.0"',
                lambda m: m[0].replace("0.1.0", "0.1.1"),
                path.read_text(),
            )
        )
    shutil.copytree(current, wheelhouse, copy_function=_link_or_copy)
    for old in wheelhouse.glob("claude_code_cluster-*.whl"):
        old.unlink()
    built = run(["uv", "build", "--wheel", "--out-dir", str(wheelhouse), "--quiet"], cwd=source)
    assert built.returncode == 0, built.stdout
    assert [p.name for p in wheelhouse.glob("claude_code_cluster-*.whl")] == [
        "claude_code_cluster-0.1.1-py3-none-any.whl"
    ]
    return wheelhouse


def _runs(api: Api, task_id: str) -> list[tuple[str, str]]:
    return [(r["id"], r["status"]) for r in api("GET", f"/api/v1/tasks/{task_id}/runs")]


def start_a_held_run(api: Api, repository: str) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The task of SLOW_ISSUE in repository and its one run, once that run is running: the
    command runner holds it at its agent until the test puts RELEASE beside WAITING."""
    task: dict[str, Any] = api(
        "POST",
        "/api/v1/tasks",
        {
            "title": "A run that outlives the coordinator's upgrade",
            "description": "The command runner waits for the test, then writes E2E_RESULT.txt.",
            "github_repository": repository,
            "github_issue_number": SLOW_ISSUE,
        },
    )

    def running() -> list[tuple[str, str]] | None:
        runs = _runs(api, task["id"])
        return runs if [status for _, status in runs] == ["running"] else None

    started = _wait_for(running, timeout=30, interval=1)
    assert started, api("GET", f"/api/v1/tasks/{task['id']}")
    return task, started


def test_upgrade_keeps_a_run_in_flight_drains_agents_and_renews_certificates(
    cluster: Cluster,
) -> None:
    wheelhouse = _next_version_wheelhouse(cluster)
    before = _cert_serials(cluster)
    task, started = start_a_held_run(cluster.api, REPO_ON_AGENTS)
    find = f"find /opt/agent/workspace -name {WAITING} -printf '%h\\n'"

    def waiting() -> list[tuple[str, str]]:
        return [(h, d) for _, h, _ in AGENTS.values() for d in cluster.ssh(h, find).stdout.split()]

    held = _wait_for(waiting, timeout=60, interval=1)
    assert len(held) == 1, held  # one run, waiting in its repository on one agent
    # Version N+1, every certificate inside the renewal window. The coordinator first, as
    # site.yml orders them: it restarts on N+1 and migrates while the run goes on at N.
    extra = f"claude_cluster_wheelhouse_src={wheelhouse} tls_cert_renew_days=400"
    coordinator_only = cluster.script(
        "deploy-cluster.sh", "-i", str(cluster.inventory), "-p",
        str(ANSIBLE_DIR / "playbooks/coordinator-setup.yml"), "--", "-e", extra,
    )  # fmt: skip
    assert coordinator_only.returncode == 0, coordinator_only.stdout[-8000:]
    assert "RUNNING HANDLER [coordinator : Restart coordinator]" in coordinator_only.stdout
    health = json.loads(
        urllib.request.urlopen(
            f"https://{COORDINATOR_IP}:8080/health", timeout=10, context=cluster.tls()
        ).read()
    )
    assert health["version"] == "0.1.1", health
    # The coordinator's restart stopped no run: the same run is still going. Let it finish.
    assert _runs(cluster.api, task["id"]) == started, "the run did not outlive the coordinator"
    host, repository = held[0]
    released = cluster.ssh(host, f"touch {shlex.quote(repository)}/{RELEASE}")
    assert released.returncode == 0, released.stdout
    # Then the agents: each is drained and the play waits for its run before upgrading it.
    agents_only = cluster.script(
        "deploy-cluster.sh", "-i", str(cluster.inventory), "-p",
        str(ANSIBLE_DIR / "playbooks/agents-setup.yml"), "--", "-e", extra,
    )  # fmt: skip
    assert agents_only.returncode == 0, agents_only.stdout[-8000:]
    assert "Wait until the agent's runs have finished" in agents_only.stdout
    # The run delivered once, on its first attempt: not killed by either restart, not retried.
    result = cluster.api("GET", f"/api/v1/tasks/{task['id']}")
    assert result["status"] == "completed", result
    assert _runs(cluster.api, task["id"]) == [(started[0][0], "succeeded")]
    # Each update of the branch in the repository it was pushed to is one reflog entry.
    reflog = (
        f"cd {REPO_ON_AGENTS} && sudo -u agent git reflog show --format=%gs"
        f" {shlex.quote(result['github_branch'])} 2>/dev/null"
    )
    pushes = [cluster.ssh(host, reflog).stdout.split() for _, host, _ in AGENTS.values()]
    assert sorted(p for p in pushes if p) == [["push"]], pushes
    # Every agent runs N+1, registered again and is back in service.
    agents = {a["id"]: a for a in cluster.api("GET", "/api/v1/agents")}
    for name in AGENTS:
        assert agents[name]["version"] == "0.1.1", agents[name]
        assert agents[name]["draining"] is False, agents[name]
    after = _cert_serials(cluster)
    assert all(after[name] != before[name] for name in before), (before, after)


def test_backup_restored_onto_a_fresh_coordinator_host(cluster: Cluster, tmp_path: Path) -> None:
    tasks_before = {t["id"]: t["status"] for t in cluster.api("GET", "/api/v1/tasks")}
    assert tasks_before
    runs_before = {tid: _runs(cluster.api, tid) for tid in tasks_before}
    for _ in range(2):  # two dumps; coordinator_backup_keep: 1 keeps the newest
        backup = cluster.ssh("h1", "systemctl start claude-coordinator-backup.service")
        assert backup.returncode == 0, cluster.ssh(
            "h1", "journalctl -u claude-coordinator-backup --no-pager | tail -20"
        ).stdout
        time.sleep(1.1)  # distinct timestamps in the names
    listed = cluster.ssh("h1", "ls /opt/coordinator/backup/").stdout.split()
    dumps = [name for name in listed if name.endswith(".dump")]
    assert len(dumps) == 1, listed
    timer = cluster.ssh("h1", "systemctl is-enabled claude-coordinator-backup.timer").stdout
    assert timer.strip() == "enabled"
    encoded = cluster.ssh("h1", f"base64 -w0 /opt/coordinator/backup/{dumps[0]}").stdout
    dump = tmp_path / dumps[0]
    dump.write_bytes(base64.b64decode(encoded))
    assert dump.read_bytes().startswith(b"PGDMP")
    # Lose the coordinator host: a new one, from the bare image, takes its address.
    for step in (("wipe", "h1"), ("up", "h1")):
        done = cluster.testhosts(*step)
        assert done.returncode == 0, done.stdout
    assert cluster.ssh("h1", "test -e /opt/coordinator").returncode != 0, "h1 is not fresh"
    # The new host runs the proxy mode: nginx in front of the coordinator, with a public
    # certificate for GitHub's webhooks (the control node stands in for GitHub's ranges).
    crt, key = _public_certificate(cluster.work)
    with (cluster.inventory.parent / "group_vars/all/zz-e2e.yml").open("a") as settings:
        settings.write(
            f"coordinator_tls_mode: proxy\nproxy_public_cert_file: {crt}\n"
            f"proxy_public_key_file: {key}\nproxy_public_server_name: {PUBLIC_NAME}\n"
            f"proxy_public_allowed_cidrs: ['{NET}.1']\n"
        )
    deployed = cluster.script(
        "deploy-cluster.sh", "-i", str(cluster.inventory), "-p",
        str(ANSIBLE_DIR / "playbooks/coordinator-setup.yml"), "--",
        "-e", f"claude_cluster_wheelhouse_src={_next_version_wheelhouse(cluster)}",
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stdout[-8000:]
    assert cluster.api("GET", "/api/v1/tasks") == []  # a new, empty database
    # The agents find the new coordinator by themselves and enrol again (their tokens are
    # unknown to its empty database): each now holds a token the dump does not know.
    assert wait_until_enrolled(cluster.api, AGENTS), cluster.api("GET", "/api/v1/agents")
    restored = cluster.script("restore.sh", "-i", str(cluster.inventory), str(dump))
    assert restored.returncode == 0, restored.stdout[-6000:]
    assert {t["id"]: t["status"] for t in cluster.api("GET", "/api/v1/tasks")} == tasks_before
    for tid, runs in runs_before.items():
        assert _runs(cluster.api, tid) == runs
    # The agents are back in service with the restored coordinator: it accepts their
    # heartbeats (restore.sh kept their tokens; the dump's rows alone say "idle" anyway).
    assert wait_for_accepted_heartbeats(cluster.api, AGENTS), (
        cluster.api("GET", "/api/v1/agents"),
        {
            host: cluster.ssh(host, "tail -n 20 /opt/agent/logs/agent.log").stdout[-3000:]
            for _, host, _ in AGENTS.values()
        },
    )


def _public_certificate(work: Path) -> tuple[Path, Path]:
    """A stand-in for the operator's publicly trusted certificate (self-signed here)."""
    crt, key = work / "public.crt", work / "public.key"
    made = run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", f"/CN={PUBLIC_NAME}",
            "-addext", f"subjectAltName=DNS:{PUBLIC_NAME},IP:{COORDINATOR_IP}",
            "-keyout", str(key), "-out", str(crt),
        ]
    )  # fmt: skip
    assert made.returncode == 0, made.stdout
    return crt, key


def test_proxy_mode_serves_the_coordinator_through_nginx(cluster: Cluster) -> None:
    # The restored host above was deployed with coordinator_tls_mode: proxy.
    url = f"https://{COORDINATOR_IP}:8080/health"
    with urllib.request.urlopen(url, timeout=10, context=cluster.tls()) as response:
        assert response.headers["Server"] == "nginx", dict(response.headers)
        assert json.loads(response.read())["status"] == "healthy"
    # The coordinator itself serves plain HTTP on loopback only.
    listening = cluster.ssh("h1", "ss -Hltn").stdout
    assert re.search(r"\s127\.0\.0\.1:8079\s", listening), listening
    assert not re.search(r"\s(0\.0\.0\.0|\*|\[::\]):8079\s", listening), listening
    assert not _reachable(COORDINATOR_IP, 8079)
    tls_lines = cluster.ssh("h1", "grep -c '^TLS_CERT_FILE=' /opt/coordinator/.env").stdout
    assert tls_lines.strip() == "0", tls_lines
    # The public endpoint: the operator's certificate, GitHub's webhook path and nothing else.
    public = ssl.create_default_context(cafile=str(cluster.work / "public.crt"))
    hook = f"https://{COORDINATOR_IP}:443/webhook/health"
    with urllib.request.urlopen(hook, timeout=10, context=public) as response:
        assert json.loads(response.read())["service"] == "github-webhook"
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        _get(hook, cluster.tls())  # not the cluster CA's certificate
    with pytest.raises(urllib.error.HTTPError) as refused:
        _get(f"https://{COORDINATOR_IP}:443/api/v1/tasks", public)
    refused.value.close()  # an HTTPError holds its response's socket
    assert refused.value.code == 404
    # A delivery reaches the coordinator, which still wants GitHub's signature (401), or
    # says webhooks are not configured here (503): its JSON answer, not nginx's.
    forged = urllib.request.Request(
        f"https://{COORDINATOR_IP}:443/webhook/github",
        method="POST",
        data=b"{}",
        headers={
            "X-GitHub-Event": "ping",
            "X-Hub-Signature-256": "sha256=" + "0" * 64,
            "Content-Type": "application/json",
        },
    )
    with pytest.raises(urllib.error.HTTPError) as answered:
        urllib.request.urlopen(forged, timeout=10, context=public)
    with answered.value:
        assert answered.value.code in (401, 503), answered.value.code
        assert json.loads(answered.value.read()), "not the coordinator's answer"


def test_add_agent_adds_a_fourth_host_that_registers(cluster: Cluster) -> None:
    name, ip, host, specialty = NEW_AGENT
    booted = cluster.testhosts("up", host)
    assert booted.returncode == 0, booted.stdout
    proc = cluster.script("add-agent.sh", "-i", str(cluster.inventory), ip, specialty, name)
    assert proc.returncode == 0, proc.stdout[-8000:]
    inventory = cluster.inventory.read_text()
    agents_section = inventory.split("[agents]")[1].split("[")[0]
    assert f"{name} ansible_host={ip} agent_specialty={specialty}" in agents_section
    assert set(_recap(proc.stdout)) == {name}, "add-agent.sh touched other hosts"
    agents = {a["id"]: a for a in cluster.api("GET", "/api/v1/agents")}
    assert name in agents and agents[name]["status"] not in ("offline", "error"), agents


def test_health_check_fails_when_an_agent_host_is_down(cluster: Cluster) -> None:
    healthy = cluster.script("health-check.sh", "-i", str(cluster.inventory))
    assert healthy.returncode == 0, healthy.stdout
    for name in [*AGENTS, NEW_AGENT[0]]:
        assert f"OK    agent {name}" in healthy.stdout
    stopped = cluster.testhosts("stop", AGENTS["agent-002"][1])
    assert stopped.returncode == 0, stopped.stdout
    degraded = cluster.script("health-check.sh", "-i", str(cluster.inventory))
    assert degraded.returncode == 1, degraded.stdout
    assert "DOWN  agent agent-002" in degraded.stdout
    assert "OK    agent agent-001" in degraded.stdout
