"""The chaos harness: real coordinator and agent processes on a PostgreSQL and a Redis of
their own, and the faults to inject into them.

- :class:`PrivatePostgres`: a PostgreSQL instance in a temporary directory on a free port
  (Debian's ``initdb`` and ``pg_ctl``, as the ``postgres`` user when we are root), so a
  test may stop and restart it without touching the machine's shared server;
- :class:`PrivateRedis`: ``redis-server`` on a free port, to stop and start again;
- :class:`Proxy`: a TCP proxy on loopback that forwards to the first backend that accepts
  (a load balancer in front of coordinator replicas) and can *cut* the link: bytes are
  swallowed in both directions and new connections hang, as across a network partition;
- :class:`Lab`: coordinator processes (``claude-cluster coordinator``) and agent daemons
  (``claude-cluster agent`` with the ``command`` runner) started on demand, a bare
  repository whose hook records every push, the database to check the invariants in, and
  every process and directory cleaned up by :meth:`Lab.close`, even after a failure.

Used by ``tests/chaos`` (small counts, asserted) and ``bench/chaos.py`` (larger counts,
a table).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from claude_cluster.coordinator.store import migrate
from tests.conftest import ADMIN_TOKEN
from tests.support.agents import (
    agent_env,
    kill_group,
    make_origin,
    make_script,
    spawn_agent,
    wait_agent_serving,
)
from tests.support.processes import (
    coordinator_env,
    descendants_of,
    kill_groups,
    spawn_coordinator,
    wait_healthy,
)
from tests.support.servers import free_port

PG_BIN = Path(os.environ.get("CHAOS_PG_BIN", "/usr/lib/postgresql/15/bin"))
ALL_SPECIALTIES = "backend,frontend,testing,devops,general"
HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def pct(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (nearest rank) of ``values``, None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- PostgreSQL and Redis of our own ----------------------------------------------------


def mark_owner(root: Path) -> None:
    """Record this process as the owner of ``root`` (see :func:`reap_abandoned`)."""
    (root / "owner.pid").write_text(str(os.getpid()))


def note_process(root: Path, pid: int) -> None:
    """Record a process group started for ``root`` (see :func:`reap_abandoned`)."""
    with (root / "processes").open("a") as out:
        out.write(f"{pid}\n")


def reap_abandoned() -> None:
    """Clean up after chaos runs whose process was killed before its clean-up ran (a
    ``timeout`` around pytest sends SIGTERM, which skips finalizers): their PostgreSQL is
    stopped, their process groups killed and their directories removed. A directory is
    abandoned when the process named in its ``owner.pid`` is gone."""
    for root in Path(tempfile.gettempdir()).glob("cc-chaos-*"):
        try:
            owner = int((root / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if owner == os.getpid() or Path(f"/proc/{owner}").exists():
            continue
        with contextlib.suppress(OSError, ValueError):
            for line in (root / "processes").read_text().split():
                with contextlib.suppress(OSError):  # gone, or a recycled id: left alone
                    cmdline = Path(f"/proc/{int(line)}/cmdline").read_bytes()
                    if b"claude_cluster" in cmdline or b"redis-server" in cmdline:
                        os.killpg(int(line), signal.SIGKILL)
        if (root / "data" / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                argv = [str(PG_BIN / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate",
                        "-w", "stop"]  # fmt: skip
                if os.geteuid() == 0:
                    argv = ["runuser", "-u", "postgres", "--", *argv]
                subprocess.run(argv, capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


class PrivatePostgres:
    """A PostgreSQL cluster of its own in a temporary directory, on a free port.

    Durability is traded for speed (``fsync=off``): a commit is written before it is
    acknowledged, so the data survives a restart of the server (even ``-m immediate``),
    not a crash of the machine, which no test makes. (``synchronous_commit=off`` would
    lose acknowledged commits to ``-m immediate``.)
    """

    def __init__(self) -> None:
        reap_abandoned()
        self.root = Path(tempfile.mkdtemp(prefix="cc-chaos-pg-"))
        mark_owner(self.root)
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self._owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:  # initdb refuses root: the server runs as postgres
            self._owner = pwd.getpwnam("postgres")
            os.chown(self.root, self._owner.pw_uid, self._owner.pw_gid)
        self._pg(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip
        self._template_ready = False

    def _pg(self, tool: str, *args: str, timeout: float = 60) -> None:
        argv = [str(PG_BIN / tool), *args]
        if self._owner is not None:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off "
            "-c max_connections=300"
        )
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                 "-o", options, "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode``: ``immediate`` is a crash as far as clients can tell."""
        self._pg("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-m", mode, "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def _admin(self, *statements: str) -> None:
        conn = await asyncpg.connect(self.url())
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    async def new_database(self) -> str:
        """A fresh migrated database (cloned from a template migrated once); its URL."""
        if not self._template_ready:
            await self._admin("CREATE DATABASE chaos_template")
            await asyncio.to_thread(migrate.upgrade, self.url("chaos_template"))
            self._template_ready = True
        name = f"chaos_{os.urandom(6).hex()}"
        await self._admin(f"CREATE DATABASE {name} TEMPLATE chaos_template")
        return self.url(name)

    def close(self) -> None:
        if self.running():
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """``redis-server`` on a free port, nothing persisted; :meth:`stop` kills it (-9),
    :meth:`start` brings it back on the same port."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = root / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        note_process(self.log.parent, self.proc.pid)
        deadline = time.monotonic() + 10
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer PING in 10 s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)
            self.proc = None


# --- a TCP proxy that can cut the link -----------------------------------------------------


class Proxy:
    """Forwards loopback TCP connections to ``backends`` (ports) in turn, skipping those
    that refuse (a load balancer in front of replicas).

    :meth:`cut` swallows every byte both ways on open connections and lets new ones hang
    (connected, never answered), as a partition does; :meth:`heal` closes the hung
    connections (their peers would time out) and forwards again. Runs in a thread of its
    own with its own event loop.
    """

    def __init__(self, backends: list[int]) -> None:
        self.backends = list(backends)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.is_cut = False
        self._turn = 0
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port)
        )
        self._ready.set()
        self._loop.run_forever()
        # stopped: let the handlers see their connections closed, then close the loop
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.run_until_complete(self._server.wait_closed())
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            while self.is_cut:  # a partition: the connection hangs
                await asyncio.sleep(0.1)
            self._turn += 1
            start = self._turn % max(1, len(self.backends))
            for port in self.backends[start:] + self.backends[:start]:
                try:
                    up_reader, upstream = await asyncio.open_connection("127.0.0.1", port)
                    break
                except OSError:
                    continue
            if upstream is None:
                return
            self._writers.add(upstream)
            await asyncio.gather(self._pump(reader, upstream), self._pump(up_reader, writer))
        except OSError:
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    self._writers.discard(w)
                    w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.is_cut:
                    continue
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()

    def cut(self) -> None:
        self.is_cut = True

    def heal(self) -> None:
        def close_all() -> None:
            for writer in list(self._writers):
                writer.close()

        self._loop.call_soon_threadsafe(close_all)
        self.is_cut = False

    def close(self) -> None:
        def shutdown() -> None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(shutdown)
        self._thread.join(timeout=10)


# --- the processes -----------------------------------------------------------------------


class _Signalled:
    """What a coordinator and an agent process have in common: stop and continue."""

    proc: subprocess.Popen[bytes] | None

    def pause(self) -> None:
        """SIGSTOP of the whole process group."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _continue_for_the_kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGCONT)


@dataclass
class Coordinator(_Signalled):
    """A coordinator process on a fixed port, to kill, stop, continue and start again."""

    name: str
    env: dict[str, str]
    log: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.proc = spawn_coordinator(self.env, log=self.log)
        note_process(self.log.parent, self.proc.pid)
        wait_healthy(self.url, self.proc, timeout=60)

    def kill(self) -> None:
        """``kill -9`` of the whole process group."""
        if self.proc is not None:
            kill_group(self.proc)

    def close(self) -> None:
        self._continue_for_the_kill()
        if self.proc is not None:
            kill_group(self.proc)


@dataclass
class Agent(_Signalled):
    """An agent daemon process with a fixed id, port and workspace across restarts."""

    id: str
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    #: runner processes a kill -9 orphaned (in their own process groups); killed at close
    orphans: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['AGENT_PORT']}"

    def start(self) -> None:
        self.proc = spawn_agent(self.env, log=self.log)
        note_process(self.log.parent, self.proc.pid)
        wait_agent_serving(self.proc, self.url, self.log)

    def kill(self) -> None:
        """``kill -9`` of the daemon; its runners (own process groups) are orphaned as a
        real kill -9 leaves them, and killed a moment later here to keep the host clean."""
        if self.proc is None:
            return
        self.orphans += descendants_of(self.proc.pid)
        kill_group(self.proc)
        self.proc = None

    def close(self) -> None:
        self._continue_for_the_kill()
        if self.proc is not None:
            self.orphans += descendants_of(self.proc.pid)
            kill_group(self.proc)
        kill_groups(self.orphans)


# --- the repository the runs deliver to ------------------------------------------------

CONTRACT = "test: 'true'\nbaseline: false\n"

#: the ``command`` runner of every chaos agent: records its pid under ``--pids`` as
#: ``<run id>.pid``, works ``--sleep`` seconds (printing a line every ``--tick``), changes
#: ``notes.txt``, reports a result
RUNNER = """
import argparse, json, os, pathlib, time
parser = argparse.ArgumentParser()
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--pids", default="")
parser.add_argument("--tick", type=float, default=0.0)
args = parser.parse_args()
run_id = os.environ.get("CLUSTER_RUN_ID", "0")
if args.pids:
    pid_file = pathlib.Path(args.pids) / f"{run_id}.pid"
    pid_file.with_suffix(".tmp").write_text(str(os.getpid()))
    os.replace(pid_file.with_suffix(".tmp"), pid_file)
print("working on run", run_id, flush=True)
end = time.monotonic() + args.sleep
while (left := end - time.monotonic()) > 0:
    time.sleep(min(left, args.tick or left))
    if args.tick:
        print("tick", flush=True)
with open("notes.txt", "a") as notes:
    notes.write(f"run {run_id}\\n")
print(json.dumps({"type": "result", "subtype": "success", "is_error": False,
    "result": "done", "total_cost_usd": 0.001, "num_turns": 1, "session_id": f"s-{run_id}",
    "usage": {"input_tokens": 10, "output_tokens": 5}}))
"""


def make_chaos_origin(root: Path, pushes: Path) -> Path:
    """A bare repository with ``notes.txt`` and a contract whose tests are ``true``; its
    ``post-receive`` hook appends ``<ref> <sha>`` to ``pushes`` for every pushed ref."""
    bare = make_origin(root, {"notes.txt": "notes\n", ".claude-cluster.yml": CONTRACT})
    hook = bare / "hooks" / "post-receive"
    hook.write_text(f'#!/bin/sh\nwhile read old new ref; do echo "$ref $new" >> {pushes}; done\n')
    hook.chmod(0o755)
    pushes.write_text("")
    return bare


# --- the lab ---------------------------------------------------------------------------


@dataclass
class Figures:
    """What a scenario measured; ``bench/chaos.py`` prints one row per scenario."""

    scenario: str
    faults: int = 0
    tasks: int = 0
    lost: int = 0
    duplicated: int = 0
    #: runs in flight at a fault that did not succeed (stopped, lost)
    stopped: int = 0
    recovery: list[float] = field(default_factory=list)
    settings: str = ""
    notes: list[str] = field(default_factory=list)
    #: Redis scenario: the live log's delay p50 before, during and after the outage
    live_log: dict[str, float | None] = field(default_factory=dict)

    def line(self) -> str:
        p50, p99 = pct(self.recovery, 0.5), pct(self.recovery, 0.99)
        rec = "-" if p50 is None else f"p50 {p50:.1f} s, p99 {p99:.1f} s"
        return (
            f"{self.scenario}: faults {self.faults}, tasks {self.tasks}, lost {self.lost}, "
            f"duplicated {self.duplicated}, recovery {rec}; {self.settings}"
            + "".join(f"; {n}" for n in self.notes)
        )


class Lab:
    """One scenario's cluster: coordinators, agents, the origin and the database.

    Args:
        root: a directory for logs, workspaces and the origin (removed by the caller).
        database_url: a migrated PostgreSQL database.
        pg: the server it is on, when the lab may restart it.
        coordinator_settings: environment for every coordinator (the tightened settings).
    """

    def __init__(
        self,
        root: Path,
        database_url: str,
        pg: PrivatePostgres | None = None,
        **coordinator_settings: str,
    ) -> None:
        self.root = root
        mark_owner(root)
        self.database_url = database_url
        #: the server of ``database_url``, for the scenarios that restart it
        self.pg = pg
        self.coordinator_settings = coordinator_settings
        self.coordinators: list[Coordinator] = []
        self.agents: dict[str, Agent] = {}
        self.proxies: list[Proxy] = []
        self.redises: list[PrivateRedis] = []
        self.pushes_file = root / "pushes.log"
        self.origin = make_chaos_origin(root / "remote", self.pushes_file)
        self.pids_dir = root / "runner-pids"
        self.pids_dir.mkdir()
        self.runner = make_script(root / "bin", "runner.py", RUNNER)
        self._db: asyncpg.Pool | None = None
        self._issue = 0

    # processes

    def redis(self) -> PrivateRedis:
        """Start a Redis of the lab's own (stopped at close)."""
        redis = PrivateRedis(self.root)
        self.redises.append(redis)
        redis.start()
        return redis

    def coordinator(self, **extra: str) -> Coordinator:
        """Start one more coordinator process (a replica on the same database)."""
        name = f"coordinator-{len(self.coordinators)}"
        port = free_port()
        settings = {**self.coordinator_settings, **extra}
        env = coordinator_env(self.database_url, PORT=str(port), LOG_LEVEL="INFO", **settings)
        coordinator = Coordinator(name, env, self.root / f"{name}.log", port)
        self.coordinators.append(coordinator)
        coordinator.start()
        return coordinator

    def proxy(self, backends: Iterable[int]) -> Proxy:
        proxy = Proxy(list(backends))
        self.proxies.append(proxy)
        return proxy

    def agent(
        self,
        agent_id: str,
        coordinator_url: str,
        *,
        work_seconds: float,
        tick: float = 0.0,
        **extra: str,
    ) -> Agent:
        """Start an agent daemon with the ``command`` runner working ``work_seconds``
        (printing a line, an event, every ``tick`` seconds)."""
        command = (
            f"{sys.executable} {self.runner} --sleep {work_seconds} --pids {self.pids_dir} "
            f"--tick {tick}"
        )
        env = agent_env(
            coordinator_url,
            self.root / agent_id,
            free_port(),
            AGENT_ID=agent_id,
            AGENT_RUNNER="command",
            AGENT_COMMAND=command,
            AGENT_SPECIALTY=ALL_SPECIALTIES,
            RUN_SANDBOX="off",  # the runner's pid is watched from the host
            **extra,
        )
        agent = Agent(agent_id, env, self.root / f"{agent_id}.log")
        self.agents[agent_id] = agent
        agent.start()
        return agent

    def close(self) -> None:
        for agent in self.agents.values():
            agent.close()
        for coordinator in self.coordinators:
            coordinator.close()
        for proxy in self.proxies:
            proxy.close()
        for redis in self.redises:
            redis.stop()

    async def aclose(self) -> None:
        if self._db is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._db.close(), 10)
        await asyncio.to_thread(self.close)

    @staticmethod
    def free_port() -> int:
        return free_port()

    # load

    def api(self, url: str, timeout: float = 10) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=timeout)

    async def submit(self, api: httpx.AsyncClient, *, attempts: int = 100) -> int:
        """Submit a task for the next issue of the origin, retrying through faults (the
        same issue again returns the same task); its id."""
        self._issue += 1
        body = {
            "title": f"chaos {self._issue}",
            "description": "append a line to notes.txt",
            "github_repository": str(self.origin),
            "github_issue_number": self._issue,
        }
        for _ in range(attempts):
            try:
                response = await api.post("/api/v1/tasks", json=body)
                if response.status_code in (200, 201):
                    return int(response.json()["id"])
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"task for issue {self._issue} was never accepted")

    # the truth: the database and the origin

    async def db(self) -> asyncpg.Pool:
        if self._db is None:
            self._db = await asyncpg.create_pool(self.database_url, min_size=0, max_size=2)
        return self._db

    async def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """A read of the coordinator's database, retried while it is down."""
        for _ in range(100):
            try:
                pool = await self.db()
                return list(await pool.fetch(sql, *args))
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await asyncio.sleep(0.2)
        raise AssertionError("the database did not answer")

    async def task_statuses(self, ids: Iterable[int]) -> dict[int, str]:
        rows = await self.query("SELECT id, status FROM tasks WHERE id = ANY($1)", list(ids))
        return {r["id"]: r["status"] for r in rows}

    async def wait_done(self, ids: list[int], timeout: float) -> dict[int, str]:
        """Wait until every task is completed or failed; the statuses at the end."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = await self.task_statuses(ids)
            if all(statuses.get(i) in ("completed", "failed", "cancelled") for i in ids):
                return statuses
            if time.monotonic() > deadline:
                return statuses
            await asyncio.sleep(0.25)

    async def runs(self, task_id: int) -> list[asyncpg.Record]:
        return await self.query(
            "SELECT * FROM task_runs WHERE task_id = $1 ORDER BY attempt", task_id
        )

    async def active_runs(self) -> list[asyncpg.Record]:
        return await self.query(
            "SELECT * FROM task_runs WHERE status IN ('dispatching', 'running') ORDER BY id"
        )

    def pushes(self) -> dict[str, int]:
        """How many times each branch was pushed to the origin."""
        counts: dict[str, int] = {}
        for line in self.pushes_file.read_text().splitlines():
            ref = line.split()[0]
            counts[ref] = counts.get(ref, 0) + 1
        return counts

    def runner_started(self, run_id: int, *, within: float | None = None) -> bool:
        """The run's runner has started (``within`` seconds ago at most, when given)."""
        pid_file = self.pids_dir / f"{run_id}.pid"
        try:
            started = pid_file.stat().st_mtime
        except FileNotFoundError:
            return False
        return within is None or time.time() - started <= within

    async def invariants(self, ids: list[int], timeout: float) -> tuple[int, int, list[str]]:
        """Wait for the tasks to end; ``(lost, duplicated, details)``: lost = not
        completed, duplicated = a branch pushed more than once or a task with more than
        one succeeded run."""
        statuses = await self.wait_done(ids, timeout)
        details: list[str] = []
        lost = [i for i in ids if statuses.get(i) != "completed"]
        for i in lost[:5]:
            runs = await self.runs(i)
            details.append(
                f"task {i} {statuses.get(i)}: "
                + ", ".join(f"{r['agent_id']} {r['status']} {r['error_category']}" for r in runs)
            )
        succeeded = await self.query(
            "SELECT task_id, count(*) AS n FROM task_runs WHERE task_id = ANY($1) "
            "AND status = 'succeeded' GROUP BY task_id HAVING count(*) > 1",
            ids,
        )
        pushed_twice = {ref: n for ref, n in self.pushes().items() if n > 1}
        details += [f"task {r['task_id']}: {r['n']} succeeded runs" for r in succeeded]
        details += [f"{ref} pushed {n} times" for ref, n in pushed_twice.items()]
        return len(lost), len(succeeded) + len(pushed_twice), details


def seconds_between(earlier: float, later: datetime | None) -> float | None:
    """Seconds from a ``time.time()`` stamp to a database timestamp."""
    if later is None:
        return None
    if later.tzinfo is None:  # stored as UTC without a zone
        later = later.replace(tzinfo=UTC)
    return later.timestamp() - earlier
