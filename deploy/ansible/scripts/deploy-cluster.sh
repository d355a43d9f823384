#!/bin/bash
# deploy-cluster.sh -- deploy claude-cluster with Ansible from the control node.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT_ROOT="$(dirname "$SCRIPT_DIR")"

INVENTORY_FILE="$PROJECT_ROOT/inventory/hosts.ini"
PLAYBOOK_FILE="$PROJECT_ROOT/playbooks/site.yml"
VERBOSE=()
CHECK_MODE=()
TAGS=""
EXTRA_ARGS=()

show_help() {
    cat <<HELP
Claude Code Cluster deployment

Usage: $(basename "$0") [OPTIONS] [-- ANSIBLE-PLAYBOOK-ARGS...]

Options:
    -i, --inventory FILE    Ansible inventory (default: inventory/hosts.ini)
    -p, --playbook FILE     Playbook (default: playbooks/site.yml)
    -v, --verbose           Verbose Ansible output (-vv)
    -c, --check             Check mode: show what would change, change nothing
    -t, --tags TAGS         Only run these comma-separated tags; site.yml has:
                              preflight, coordinator, agents, monitoring, verify
                            (--list-tags prints the tags of any playbook)
    -h, --help              Show this help

Anything after "--" goes to ansible-playbook as is (for example --ask-vault-pass, -l HOST).

Examples:
    $(basename "$0")                      # full deployment
    $(basename "$0") -c                   # dry run
    $(basename "$0") -t coordinator       # the coordinator only
    $(basename "$0") -t agents            # the agents only
    $(basename "$0") -- --ask-vault-pass  # prompt for the vault password
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
        -p|--playbook)
            [[ $# -ge 2 && -n $2 ]] || usage_error "$1 needs a file"
            PLAYBOOK_FILE="$2"; shift 2 ;;
        -v|--verbose) VERBOSE=(-vv); shift ;;
        -c|--check) CHECK_MODE=(--check --diff); shift ;;
        -t|--tags)
            [[ $# -ge 2 && -n $2 ]] || usage_error "$1 needs a comma-separated list of tags"
            TAGS="$2"; shift 2 ;;
        -h|--help) show_help; exit 0 ;;
        --) shift; EXTRA_ARGS=("$@"); break ;;
        *) usage_error "unknown option: $1" ;;
    esac
done

# Relative paths are relative to where the script was called from.
abspath() { [[ $1 == /* ]] && echo "$1" || echo "$PWD/$1"; }
INVENTORY_FILE="$(abspath "$INVENTORY_FILE")"
PLAYBOOK_FILE="$(abspath "$PLAYBOOK_FILE")"

check_prerequisites() {
    echo "Checking prerequisites..."
    if ! command -v ansible-playbook >/dev/null 2>&1; then
        echo "ansible-playbook is not installed (pip install 'ansible>=10,<11')" >&2
        exit 1
    fi
    if [[ ! -f $INVENTORY_FILE ]]; then
        echo "Inventory file not found: $INVENTORY_FILE" >&2
        exit 1
    fi
    if [[ ! -f $PLAYBOOK_FILE ]]; then
        echo "Playbook file not found: $PLAYBOOK_FILE" >&2
        exit 1
    fi
    if [[ -n $TAGS ]]; then
        local known tag
        known="$(ansible-playbook -i "$INVENTORY_FILE" "$PLAYBOOK_FILE" --list-tags "${EXTRA_ARGS[@]}" 2>/dev/null |
            sed -n 's/.*TASK TAGS: \[\(.*\)\]/\1/p' | tr -d ' ' | tr ',' '\n' | sort -u)"
        IFS=',' read -r -a wanted <<<"$TAGS"
        for tag in "${wanted[@]}"; do
            if [[ $tag != all && $tag != always ]] && ! grep -qx -- "$tag" <<<"$known"; then
                echo "Unknown tag '$tag' for $(basename "$PLAYBOOK_FILE"). Known tags:" >&2
                while read -r tag; do echo "  $tag"; done <<<"$known" >&2
                exit 2
            fi
        done
    fi
    echo "Testing SSH connectivity..."
    local ping_out
    if ! ping_out="$(ansible all -i "$INVENTORY_FILE" -m ansible.builtin.ping -o "${EXTRA_ARGS[@]}" 2>&1)"; then
        echo "SSH connectivity test failed:" >&2
        echo "$ping_out" | grep -v '| SUCCESS' >&2 || true
        echo "Please ensure:" >&2
        echo "  1. SSH keys are configured (ansible_ssh_private_key_file in the inventory)" >&2
        echo "  2. the target hosts are reachable" >&2
        echo "  3. their host keys are in ~/.ssh/known_hosts (ssh-keyscan)" >&2
        exit 1
    fi
    echo "All prerequisites satisfied."
}

# Reads a variable of the first coordinator from the inventory (group_vars included).
coordinator_var() {
    ansible-inventory -i "$INVENTORY_FILE" --list "${EXTRA_ARGS[@]}" 2>/dev/null | python3 -c '
import json, sys
inv = json.load(sys.stdin)
hosts = inv.get("coordinators", {}).get("hosts", [])
if hosts:
    hv = inv["_meta"]["hostvars"].get(hosts[0], {})
    value = hv.get(sys.argv[1], sys.argv[2])
    print(hosts[0] if sys.argv[1] == "ansible_host" and not value else value)
' "$1" "${2:-}"
}

print_access_points() {
    local host port grafana_port prometheus_port grafana tls scheme
    host="$(coordinator_var ansible_host)"
    port="$(coordinator_var coordinator_port 8080)"
    grafana_port="$(coordinator_var grafana_port 3000)"
    prometheus_port="$(coordinator_var prometheus_port 9090)"
    grafana="$(coordinator_var monitoring_grafana_enabled True)"
    tls="$(coordinator_var cluster_tls True)"
    [[ -n $host ]] || return 0
    scheme=http
    [[ $tls == True || $tls == true ]] && scheme=https
    echo ""
    echo "Access points:"
    echo "   Coordinator API:   $scheme://$host:$port  (health: $scheme://$host:$port/health)"
    if [[ $scheme == https ]]; then
        echo "   Cluster CA:        $(dirname "$INVENTORY_FILE")/pki/ca.crt"
        echo "                      (curl --cacert it; the CLI: SSL_CERT_FILE=<it> claude-cluster ...)"
    else
        echo "   WARNING: cluster_tls is false, tokens travel in clear text."
    fi
    if [[ $grafana == True || $grafana == true ]]; then
        echo "   Grafana:           $scheme://$host:$grafana_port"
    fi
    echo "   Prometheus:        loopback only on the coordinator; tunnel it with"
    echo "                      ssh -L $prometheus_port:127.0.0.1:$prometheus_port $host  ->  http://127.0.0.1:$prometheus_port"
}

deploy_cluster() {
    echo "Starting Claude Code Cluster deployment..."
    echo "   Inventory: $INVENTORY_FILE"
    echo "   Playbook:  $PLAYBOOK_FILE"
    local tag_args=()
    [[ -n $TAGS ]] && tag_args=(--tags "$TAGS")
    # Under set -e a failing ansible-playbook would end the script before a "$?" check could
    # run, so test it directly.
    if ! ansible-playbook -i "$INVENTORY_FILE" "$PLAYBOOK_FILE" \
        "${VERBOSE[@]}" "${CHECK_MODE[@]}" "${tag_args[@]}" "${EXTRA_ARGS[@]}"; then
        echo "Deployment failed!" >&2
        exit 1
    fi
    if [[ ${#CHECK_MODE[@]} -gt 0 ]]; then
        echo "Check mode finished: nothing was changed."
    else
        echo "Deployment completed successfully!"
        print_access_points
    fi
}

main() {
    # ansible.cfg lives in the project root.
    cd "$PROJECT_ROOT"
    check_prerequisites
    deploy_cluster
}

main
