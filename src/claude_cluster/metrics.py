"""Every Prometheus metric of the project, declared once. One name, one meaning.

Coordinator metrics are served on the coordinator's port at ``/metrics``, agent metrics on
the agent's port. Names follow the seed where it named them, with its collisions fixed:
HTTP requests of the coordinator are ``claude_http_*`` (not ``claude_api_*``, which the seed
also used for model calls), model usage is ``claude_model_*``, and load is 0–1 everywhere.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: what the coordinator serves at /metrics
COORDINATOR = CollectorRegistry()
#: what an agent serves at /metrics
AGENT = CollectorRegistry()

# --- coordinator ------------------------------------------------------------------------

TASKS_TOTAL = Counter(
    "claude_tasks_total",
    "Tasks that reached a status.",
    ["status", "priority"],
    registry=COORDINATOR,
)
TASKS_QUEUE_SIZE = Gauge(
    "claude_tasks_queue_size", "Tasks waiting in status queued.", registry=COORDINATOR
)
TASKS_OLDEST_QUEUED = Gauge(
    "claude_tasks_oldest_queued_seconds",
    "How long the longest-waiting queued task (past its retry back-off) has waited.",
    registry=COORDINATOR,
)
TASKS_WAITING_FOR_AGENT = Gauge(
    "claude_tasks_waiting_for_agent",
    "Queued tasks that no online, ready agent has the requirements for.",
    registry=COORDINATOR,
)
TASKS_ACTIVE = Gauge("claude_tasks_active", "Tasks with a run on an agent.", registry=COORDINATOR)
TASK_DURATION = Histogram(
    "claude_task_duration_seconds",
    "Wall time of finished runs, from dispatch to result.",
    buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
    registry=COORDINATOR,
)
RUNS_TOTAL = Counter(
    "claude_runs_total", "Finished runs by outcome.", ["outcome"], registry=COORDINATOR
)
RUN_COST_USD = Counter(
    "claude_run_cost_usd_total", "Model cost reported by finished runs.", registry=COORDINATOR
)
DELIVERY_CONFIRMATIONS = Counter(
    "claude_delivery_confirmations_total",
    "Fencing checks before a delivery, by outcome (confirmed, refused).",
    ["outcome"],
    registry=COORDINATOR,
)
AGENTS_PROBED_DEAD = Counter(
    "claude_agents_probed_dead_total",
    "Late agents whose /health refused the connection: their runs were lost at once.",
    registry=COORDINATOR,
)
DISPATCH_LATENCY = Histogram(
    "claude_dispatch_latency_seconds",
    "From a task becoming queued to the agent accepting its run.",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=COORDINATOR,
)
CLAIM_DURATION = Histogram(
    "claude_claim_duration_seconds",
    "One claim transaction of the dispatcher (read, score, take slots, insert runs).",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1),
    registry=COORDINATOR,
)
AGENTS_TOTAL = Gauge("claude_agents_total", "Registered agents.", registry=COORDINATOR)
AGENTS_AVAILABLE = Gauge(
    "claude_agents_available", "Online agents with a free slot.", registry=COORDINATOR
)
AGENT_LOAD = Gauge(
    "claude_agent_load", "Agent load, 0–1.", ["agent_id", "specialty"], registry=COORDINATOR
)
AGENT_LAST_HEARTBEAT = Gauge(
    "claude_agent_last_heartbeat",
    "Unix time of the agent's last heartbeat.",
    ["agent_id"],
    registry=COORDINATOR,
)
AGENT_NOT_READY = Gauge(
    "claude_agent_not_ready",
    "1 while the coordinator gives the agent no work because it is not ready (its start "
    "checks failed, or runs failed for a reason of the agent twice in a row).",
    ["agent_id"],
    registry=COORDINATOR,
)
HTTP_REQUESTS = Counter(
    "claude_http_requests_total",
    "Coordinator HTTP requests.",
    ["method", "endpoint", "status"],
    registry=COORDINATOR,
)
HTTP_DURATION = Histogram(
    "claude_http_request_duration_seconds",
    "Coordinator HTTP request latency.",
    ["endpoint"],
    registry=COORDINATOR,
)
DB_UP = Gauge("claude_db_up", "1 when the last database check succeeded.", registry=COORDINATOR)
GITHUB_WEBHOOKS = Counter(
    "claude_github_webhooks_total",
    "GitHub webhook deliveries received.",
    ["event_type"],
    registry=COORDINATOR,
)
GITHUB_API_CALLS = Counter(
    "claude_github_api_calls_total",
    "Calls to the GitHub API.",
    ["endpoint", "status"],
    registry=COORDINATOR,
)
GITHUB_RATE_LIMIT_REMAINING = Gauge(
    "claude_github_rate_limit_remaining",
    "X-RateLimit-Remaining of the last GitHub response.",
    registry=COORDINATOR,
)
GITHUB_DELIVERIES = Counter(
    "claude_github_deliveries_total",
    "Webhook delivery attempts by outcome: processed, ignored, error (given up after its "
    "attempts) or retried (put back for a later attempt).",
    ["outcome"],
    registry=COORDINATOR,
)
GITHUB_DELIVERIES_WAITING = Gauge(
    "claude_github_deliveries_waiting",
    "Webhook deliveries received and not finished yet, cluster-wide (from the database).",
    registry=COORDINATOR,
)
GITHUB_DELIVERY_OLDEST_WAITING = Gauge(
    "claude_github_delivery_oldest_waiting_seconds",
    "Age of the oldest webhook delivery not finished yet; 0 when none waits.",
    registry=COORDINATOR,
)
GITHUB_PRS_CREATED = Counter(
    "claude_github_prs_created_total", "Pull requests opened.", registry=COORDINATOR
)
GITHUB_TRIGGERS_IGNORED = Counter(
    "claude_github_triggers_ignored_total",
    "GitHub events that would have steered a run but were ignored: an untrusted actor, "
    "or a pull request that is not the task's own (a fork, another branch or number).",
    ["event_type", "reason"],
    registry=COORDINATOR,
)
# --- agent --------------------------------------------------------------------------------

AGENT_TASKS_COMPLETED = Counter(
    "claude_agent_tasks_completed_total",
    "Runs this agent finished successfully.",
    ["agent_id"],
    registry=AGENT,
)
AGENT_DELIVERIES_DISCARDED = Counter(
    "claude_delivery_refused_total",
    "Finished runs whose result was discarded instead of delivered, by reason (refused: "
    "the coordinator said the run no longer holds its task; unconfirmed: no confirmation "
    "within the run's wall time).",
    ["agent_id", "reason"],
    registry=AGENT,
)
AGENT_TASKS_FAILED = Counter(
    "claude_agent_tasks_failed_total",
    "Runs this agent finished unsuccessfully.",
    ["agent_id"],
    registry=AGENT,
)
AGENT_TASK_DURATION = Histogram(
    "claude_agent_task_duration_seconds",
    "Wall time of runs on this agent.",
    buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
    registry=AGENT,
)
AGENT_READY = Gauge(
    "claude_agent_ready",
    "1 when the agent takes runs, 0 when one of its readiness checks failed (runner, "
    "model credentials, sandbox canary, workspace).",
    ["agent_id"],
    registry=AGENT,
)
AGENT_SANDBOX = Gauge(
    "claude_agent_sandbox",
    "1 when runs are confined, 0 when RUN_SANDBOX=off.",
    ["agent_id"],
    registry=AGENT,
)
WORKSPACE_DISK_USAGE = Gauge(
    "claude_workspace_disk_usage_bytes", "Bytes under WORKSPACE_PATH.", registry=AGENT
)
WORKSPACE_ACTIVE_TASKS = Gauge(
    "claude_workspace_active_tasks", "Runs with a live worktree.", registry=AGENT
)
MODEL_TOKENS = Counter(
    "claude_model_tokens_total", "Model tokens used by runs.", ["agent_id", "type"], registry=AGENT
)
MODEL_COST_USD = Counter(
    "claude_model_cost_usd_total", "Model cost of runs.", ["agent_id"], registry=AGENT
)
GIT_OPERATIONS = Counter(
    "claude_git_operations_total", "Git operations.", ["agent_id", "operation"], registry=AGENT
)
