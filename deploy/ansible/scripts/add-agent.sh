#!/bin/bash
# add-agent.sh -- add an agent host to the inventory and deploy it.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT_ROOT="$(dirname "$SCRIPT_DIR")"
INVENTORY_FILE="${CLAUDE_CLUSTER_INVENTORY:-$PROJECT_ROOT/inventory/hosts.ini}"
SPECIALTIES="backend frontend testing devops general"
EXTRA_ARGS=()

show_help() {
    cat <<HELP
Usage: $(basename "$0") [-i INVENTORY] <agent_ip> <specialty> [name] [-- ANSIBLE-PLAYBOOK-ARGS...]

Adds the host to the [agents] section of the inventory and deploys it (pre-flight checks,
then agents-setup.yml limited to the new host). The agent registers itself with the
coordinator.

Arguments:
    agent_ip     IPv4 address of the new agent host
    specialty    one of: $SPECIALTIES
    name         inventory name (default: agent-<last octet of the address>)

Options:
    -i FILE      inventory file (default: inventory/hosts.ini, or \$CLAUDE_CLUSTER_INVENTORY)
    -h, --help   show this help
HELP
}

usage_error() {
    echo "Error: $1" >&2
    echo >&2
    show_help >&2
    exit 2
}

POSITIONAL=()
while [[ $# -gt 0 ]]; do
    case $1 in
        -i|--inventory)
            [[ $# -ge 2 && -n $2 ]] || usage_error "$1 needs a file"
            INVENTORY_FILE="$2"; shift 2 ;;
        -h|--help) show_help; exit 0 ;;
        --) shift; EXTRA_ARGS=("$@"); break ;;
        -*) usage_error "unknown option: $1" ;;
        *) POSITIONAL+=("$1"); shift ;;
    esac
done

[[ ${#POSITIONAL[@]} -ge 2 && ${#POSITIONAL[@]} -le 3 ]] || usage_error "expected <agent_ip> <specialty> [name]"
AGENT_IP="${POSITIONAL[0]}"
AGENT_SPECIALTY="${POSITIONAL[1]}"
AGENT_NAME="${POSITIONAL[2]:-agent-${AGENT_IP##*.}}"

valid_ipv4() {
    local IFS=. octet
    local -a octets
    [[ $1 =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || return 1
    read -r -a octets <<<"$1"
    for octet in "${octets[@]}"; do ((10#$octet <= 255)) || return 1; done
}

valid_ipv4 "$AGENT_IP" || usage_error "not an IPv4 address: $AGENT_IP"
[[ " $SPECIALTIES " == *" $AGENT_SPECIALTY "* ]] || usage_error "unknown specialty: $AGENT_SPECIALTY (one of: $SPECIALTIES)"
[[ $AGENT_NAME =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || usage_error "invalid name: $AGENT_NAME"
[[ $INVENTORY_FILE == /* ]] || INVENTORY_FILE="$PWD/$INVENTORY_FILE"
[[ -f $INVENTORY_FILE ]] || { echo "Inventory file not found: $INVENTORY_FILE" >&2; exit 1; }
grep -q '^\[agents\][[:space:]]*$' "$INVENTORY_FILE" || { echo "No [agents] section in $INVENTORY_FILE" >&2; exit 1; }

# Refuse duplicates (same name or same address anywhere in the inventory).
if grep -Eq "^${AGENT_NAME//./\\.}([[:space:]]|$)" "$INVENTORY_FILE"; then
    echo "An inventory host named $AGENT_NAME already exists in $INVENTORY_FILE" >&2
    exit 1
fi
if grep -Eq "ansible_host=${AGENT_IP//./\\.}([[:space:]]|$)" "$INVENTORY_FILE"; then
    echo "A host with address $AGENT_IP already exists in $INVENTORY_FILE" >&2
    exit 1
fi

add_to_inventory() {
    local line="$AGENT_NAME ansible_host=$AGENT_IP agent_specialty=$AGENT_SPECIALTY"
    local tmp
    tmp="$(mktemp "$INVENTORY_FILE.XXXXXX")"
    # Insert after the last host line of [agents] (not at the end of the file, which the
    # deployment document's version did, landing in [cluster:vars]).
    awk -v line="$line" '
        function flush() { if (in_agents && !done) { print line; done = 1 } }
        /^\[/ {
            if (in_agents) { flush(); for (i = 0; i < blanks; i++) print ""; blanks = 0 }
            in_agents = ($0 ~ /^\[agents\][[:space:]]*$/)
            print; next
        }
        in_agents && /^[[:space:]]*$/ { blanks++; next }
        in_agents { for (i = 0; i < blanks; i++) print ""; blanks = 0; print; next }
        { print }
        END { if (in_agents) { flush(); for (i = 0; i < blanks; i++) print "" } }
    ' "$INVENTORY_FILE" >"$tmp"
    cat "$tmp" >"$INVENTORY_FILE"
    rm -f "$tmp"
}

echo "Adding new agent:"
echo "   Name:      $AGENT_NAME"
echo "   IP:        $AGENT_IP"
echo "   Specialty: $AGENT_SPECIALTY"
echo "   Inventory: $INVENTORY_FILE"
add_to_inventory

cd "$PROJECT_ROOT"
if ! ansible-playbook -i "$INVENTORY_FILE" \
    playbooks/pre-flight-checks.yml playbooks/agents-setup.yml \
    --limit "$AGENT_NAME" "${EXTRA_ARGS[@]}"; then
    echo "Deploying $AGENT_NAME failed; it stays in the inventory, fix the problem and re-run:" >&2
    echo "  ansible-playbook -i $INVENTORY_FILE playbooks/agents-setup.yml --limit $AGENT_NAME" >&2
    exit 1
fi
echo "Agent $AGENT_NAME added and registered."
