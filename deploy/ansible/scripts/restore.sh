#!/bin/bash
# restore.sh -- restore a coordinator database dump (made by the backup timer) onto the
# coordinator host of the inventory: a fresh host deployed with deploy-cluster.sh, or the
# same host after a loss. The coordinator is stopped, the database is recreated from the
# dump, and the coordinator starts again (running any newer migrations first).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT_ROOT="$(dirname "$SCRIPT_DIR")"
INVENTORY_FILE="$PROJECT_ROOT/inventory/hosts.ini"
EXTRA_ARGS=()

show_help() {
    cat <<HELP
Usage: $(basename "$0") [-i INVENTORY] DUMP [-- ANSIBLE-PLAYBOOK-ARGS...]

Restore DUMP (a file on the control node, e.g. fetched from the old coordinator's
/opt/coordinator/backup/coordinator-<time>.dump) onto the inventory's coordinator.
Everything in the coordinator's database now is replaced.

Options:
    -i, --inventory FILE    Ansible inventory (default: inventory/hosts.ini)
    -h, --help              Show this help

Anything after "--" goes to ansible-playbook (for example --ask-vault-pass).
HELP
}

usage_error() {
    echo "Error: $1" >&2
    echo >&2
    show_help >&2
    exit 2
}

DUMP=""
while [[ $# -gt 0 ]]; do
    case $1 in
        -i|--inventory)
            [[ $# -ge 2 && -n $2 ]] || usage_error "$1 needs a file"
            INVENTORY_FILE="$2"; shift 2 ;;
        -h|--help) show_help; exit 0 ;;
        --) shift; EXTRA_ARGS=("$@"); break ;;
        -*) usage_error "unknown option: $1" ;;
        *)
            [[ -z $DUMP ]] || usage_error "one dump only"
            DUMP="$1"; shift ;;
    esac
done
[[ -n $DUMP ]] || usage_error "which dump? (DUMP is required)"
[[ $DUMP == /* ]] || DUMP="$PWD/$DUMP"
[[ $INVENTORY_FILE == /* ]] || INVENTORY_FILE="$PWD/$INVENTORY_FILE"
[[ -f $DUMP ]] || usage_error "no such dump: $DUMP"
[[ -f $INVENTORY_FILE ]] || usage_error "no such inventory: $INVENTORY_FILE"
# A custom-format pg_dump starts with PGDMP.
[[ "$(head -c 5 "$DUMP")" == PGDMP ]] || usage_error "$DUMP is not a pg_dump custom-format dump"
command -v ansible-playbook >/dev/null || { echo "ansible-playbook is not installed" >&2; exit 1; }

cd "$PROJECT_ROOT"
if ! ansible-playbook -i "$INVENTORY_FILE" playbooks/restore.yml -e "restore_dump=$DUMP" "${EXTRA_ARGS[@]}"; then
    echo "Restore failed!" >&2
    exit 1
fi
echo "Restored $(basename "$DUMP") onto the coordinator."
