#!/bin/bash
# health-check.sh -- check the coordinator, every agent in the inventory, PostgreSQL and
# Redis. Exits 0 when everything is healthy, 1 when something is down, 2 on bad usage.
#
# Agents accept connections from the coordinator only, and PostgreSQL/Redis listen on the
# coordinator's loopback, so those checks run on the hosts over SSH (through Ansible, with
# the inventory's connection settings); the coordinator API is checked directly.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT_ROOT="$(dirname "$SCRIPT_DIR")"
INVENTORY_FILE="${CLAUDE_CLUSTER_INVENTORY:-$PROJECT_ROOT/inventory/hosts.ini}"
TIMEOUT=5

show_help() {
    cat <<HELP
Usage: $(basename "$0") [-i INVENTORY] [-t SECONDS]

Options:
    -i FILE      inventory file (default: inventory/hosts.ini, or \$CLAUDE_CLUSTER_INVENTORY)
    -t SECONDS   timeout of each check (default: $TIMEOUT)
    -h, --help   show this help
HELP
}

usage_error() {
    echo "Error: $1" >&2
    echo >&2
    show_help >&2
    exit 2
}

while [[ $# -gt 0 ]]; do
    case $1 in
        -i|--inventory)
            [[ $# -ge 2 && -n $2 ]] || usage_error "$1 needs a file"
            INVENTORY_FILE="$2"; shift 2 ;;
        -t|--timeout)
            [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || usage_error "$1 needs a number of seconds"
            TIMEOUT="$2"; shift 2 ;;
        -h|--help) show_help; exit 0 ;;
        *) usage_error "unknown argument: $1" ;;
    esac
done
[[ $INVENTORY_FILE == /* ]] || INVENTORY_FILE="$PWD/$INVENTORY_FILE"
[[ -f $INVENTORY_FILE ]] || { echo "Inventory file not found: $INVENTORY_FILE" >&2; exit 2; }
command -v ansible >/dev/null || { echo "ansible is not installed" >&2; exit 2; }
command -v curl >/dev/null || { echo "curl is not installed" >&2; exit 2; }

cd "$PROJECT_ROOT"   # for ansible.cfg
export ANSIBLE_TIMEOUT="$TIMEOUT"
# No shared SSH master connections: a master to a host that just died hangs until its
# keepalives give up, instead of failing after the connect timeout.
export ANSIBLE_SSH_ARGS="-o ControlMaster=no -o ControlPath=none"
FAILURES=0
ok() { echo "   OK    $1"; }
bad() { echo "   DOWN  $1"; FAILURES=$((FAILURES + 1)); }

# "coordinators" name address port mode, then one "agents" name address line per agent.
inventory_facts() {
    ansible-inventory -i "$INVENTORY_FILE" --list 2>/dev/null | python3 -c '
import json, sys
inv = json.load(sys.stdin)
hv = inv["_meta"]["hostvars"]
for group in ("coordinators", "agents"):
    for h in inv.get(group, {}).get("hosts", []):
        v = hv.get(h, {})
        tls = str(v.get("cluster_tls", True)).lower() in ("true", "yes", "1")
        print(group, h, v.get("ansible_host", h), v.get("coordinator_port", 8080),
              v.get("agent_port", 8081), v.get("coordinator_install_mode", "native"),
              "https" if tls else "http", v.get("cluster_tls_dir", "/etc/claude-cluster/tls"))
'
}

FACTS="$(inventory_facts)" || { echo "Cannot read the inventory $INVENTORY_FILE" >&2; exit 2; }
read -r _ COORD_NAME COORD_HOST COORD_PORT _ COORD_MODE SCHEME TLS_DIR < <(grep '^coordinators ' <<<"$FACTS" | head -n 1) || true
[[ -n ${COORD_NAME:-} ]] || { echo "No host in [coordinators] in $INVENTORY_FILE" >&2; exit 2; }
# With cluster_tls the coordinator's certificate is checked against the cluster CA, kept
# next to the inventory (pki/ca.crt) unless CLAUDE_CLUSTER_CA names another file.
CURL_TLS=()
if [[ $SCHEME == https ]]; then
    CA_FILE="${CLAUDE_CLUSTER_CA:-$(dirname "$INVENTORY_FILE")/pki/ca.crt}"
    [[ -f $CA_FILE ]] || { echo "The cluster CA $CA_FILE is missing (set CLAUDE_CLUSTER_CA)" >&2; exit 2; }
    CURL_TLS=(--cacert "$CA_FILE")
fi

echo "Claude Code Cluster health check"
echo "================================"

echo "Coordinator:"
COORD_URL="$SCHEME://$COORD_HOST:$COORD_PORT"
if curl -fsS --max-time "$TIMEOUT" "${CURL_TLS[@]}" -o /dev/null "$COORD_URL/health"; then
    ok "coordinator API $COORD_URL/health"
else
    bad "coordinator API $COORD_URL/health"
fi

echo ""
echo "Agents:"
AGENTS="$(grep '^agents ' <<<"$FACTS" || true)"
if [[ -z $AGENTS ]]; then
    echo "   (no agents in the inventory)"
else
    # Each agent checks its own /health (port 8081 is only open to the coordinator).
    agent_port="$(awk 'NR==1{print $5}' <<<"$AGENTS")"
    uri_args="url=$SCHEME://127.0.0.1:$agent_port/health timeout=$TIMEOUT"
    [[ $SCHEME == https ]] && uri_args+=" ca_path=$TLS_DIR/ca.crt"
    results="$(ansible agents -i "$INVENTORY_FILE" -o -m ansible.builtin.uri -a "$uri_args" 2>&1 || true)"
    while read -r _ name host _; do
        if grep -q "^$name | SUCCESS" <<<"$results"; then
            ok "agent $name ($host)"
        else
            bad "agent $name ($host): $(grep -m1 "^$name |" <<<"$results" | cut -c1-160 || echo 'no answer')"
        fi
    done <<<"$AGENTS"
fi

echo ""
echo "Database and cache (on $COORD_NAME):"
if [[ $COORD_MODE == compose ]]; then
    pg_cmd="docker compose -f /opt/coordinator/docker-compose.yml --env-file /opt/coordinator/compose.env exec -T postgres pg_isready -q"
    # The container has the password in REDISCLI_AUTH.
    redis_cmd="docker compose -f /opt/coordinator/docker-compose.yml --env-file /opt/coordinator/compose.env exec -T redis redis-cli ping"
else
    pg_cmd="pg_isready -q -h 127.0.0.1 -p 5432"
    # Redis requires its password: read it on the host (never passed on a command line).
    # shellcheck disable=SC2016 # expanded by the coordinator host's shell
    redis_cmd='REDISCLI_AUTH="$(sed -n "s/^requirepass //p" /etc/redis/redis.conf)" redis-cli -h 127.0.0.1 -p 6379 ping'
fi
if ansible "$COORD_NAME" -i "$INVENTORY_FILE" -b -o -m ansible.builtin.command -a "$pg_cmd" >/dev/null 2>&1; then
    ok "PostgreSQL"
else
    bad "PostgreSQL"
fi
if ansible "$COORD_NAME" -i "$INVENTORY_FILE" -b -o -m ansible.builtin.shell -a "$redis_cmd" 2>/dev/null | grep -q PONG; then
    ok "Redis"
else
    bad "Redis"
fi

echo ""
if ((FAILURES > 0)); then
    echo "$FAILURES check(s) failed."
    exit 1
fi
echo "All checks passed."
