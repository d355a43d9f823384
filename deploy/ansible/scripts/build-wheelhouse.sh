#!/bin/bash
# build-wheelhouse.sh -- build the project wheel and, for hosts without a package index, every
# dependency it needs, into one directory that the playbooks copy to the hosts
# (claude_cluster_wheelhouse_dir in group_vars).
#
# The dependency set is the project's lockfile (uv.lock), exported with `uv export`, so the
# hosts get exactly the versions the project was tested with.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../../.." && pwd)"
OUT_DIR="$REPO_ROOT/dist/wheelhouse"
OFFLINE=1
EXTRAS="agent"

show_help() {
    cat <<HELP
Usage: $0 [OPTIONS]

Build the claude-code-cluster wheel (and its dependencies) for deployment.

Options:
    -o, --out DIR       Output directory (default: dist/wheelhouse in the repository)
    -n, --no-deps       Only build the project wheel; hosts then install the
                        dependencies from their package index
    -e, --extras LIST   Comma-separated extras whose dependencies are included
                        (default: agent; use "" for a coordinator-only wheelhouse)
    -h, --help          Show this help message
HELP
}

while [[ $# -gt 0 ]]; do
    case $1 in
        -o|--out)
            [[ $# -ge 2 ]] || { echo "Missing value for $1" >&2; show_help >&2; exit 2; }
            OUT_DIR="$2"; shift 2 ;;
        -n|--no-deps) OFFLINE=0; shift ;;
        -e|--extras)
            [[ $# -ge 2 ]] || { echo "Missing value for $1" >&2; show_help >&2; exit 2; }
            EXTRAS="$2"; shift 2 ;;
        -h|--help) show_help; exit 0 ;;
        *) echo "Unknown option: $1" >&2; show_help >&2; exit 2 ;;
    esac
done

command -v uv >/dev/null || { echo "uv is not installed (https://docs.astral.sh/uv/)" >&2; exit 1; }
mkdir -p "$OUT_DIR"
# One project wheel only, so "the newest wheel" is never ambiguous for the playbooks.
rm -f "$OUT_DIR"/claude_code_cluster-*.whl
(cd "$REPO_ROOT" && uv build --wheel --out-dir "$OUT_DIR" --quiet)

if [[ $OFFLINE -eq 1 ]]; then
    extra_args=()
    IFS=',' read -r -a extra_list <<<"$EXTRAS"
    for e in "${extra_list[@]}"; do [[ -n $e ]] && extra_args+=(--extra "$e"); done
    reqs="$(mktemp)"
    trap 'rm -f "$reqs"' EXIT
    # The lockfile's full closure. Markers are dropped (the hosts' Python may differ from the
    # control node's, e.g. Debian 12's 3.11.2 needs async-timeout), except platform markers
    # for systems the hosts never are.
    (cd "$REPO_ROOT" && uv export --frozen --no-default-groups --no-emit-project --no-hashes \
        "${extra_args[@]}" --format requirements-txt) |
        grep -E '^[A-Za-z0-9]' |
        grep -v -E "sys_platform == '(win32|cygwin|emscripten)'|implementation_name == 'PyPy'" |
        sed -E 's/ *;.*$//' >"$reqs"
    # uv is part of the agents' toolchain (dev-tools-setup); ship it too.
    echo uv >>"$reqs"
    if python3 -m pip --version >/dev/null 2>&1; then
        pip=(python3 -m pip)
    else
        pip=(uvx pip)
    fi
    "${pip[@]}" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --dest "$OUT_DIR" -r "$reqs"
fi
ls "$OUT_DIR"/claude_code_cluster-*.whl
