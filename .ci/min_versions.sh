#!/usr/bin/env bash
# Floor job: install llm_coop_envs with exactly the lowest dependency versions it claims to support
# (constraints-min.txt) in a throwaway virtualenv, then import it and run the env tests with them.
# Needs python3 with pip and bubblewrap (bwrap) for the coding env's sandbox; .ci/run installs bwrap.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
start=$SECONDS

tmp=$(mktemp -d "${TMPDIR:-/tmp}/llm-coop-min.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
venv=$tmp/venv

# python3 -m venv needs ensurepip, which some distributions ship separately (python3-venv): without it,
# make a venv without pip and drive the host's pip at it.
if [ -z "${MIN_VERSIONS_NO_ENSUREPIP:-}" ] && python3 -m venv "$venv" >/dev/null 2>&1; then
  pip=("$venv/bin/python" -m pip)
else
  rm -rf "$venv"
  python3 -m venv --without-pip "$venv"
  pip=(python3 -m pip --python "$venv/bin/python")
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1

floors=$(grep -Ev '^[[:space:]]*(#|$)' constraints-min.txt)
# shellcheck disable=SC2086
"${pip[@]}" install -q $floors "pytest>=8"
"${pip[@]}" install -q --no-deps -e "$repo"

# Every floor must be installed exactly (a transitive requirement could have pulled a newer one).
"$venv/bin/python" - "$repo/constraints-min.txt" <<'PY'
import sys
from importlib.metadata import version

bad = []
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if line:
        name, want = line.split("==")
        if version(name) != want:
            bad.append(f"{name}: installed {version(name)}, floor {want}")
if bad:
    sys.exit("floors not installed exactly:\n  " + "\n  ".join(bad))
PY
command -v bwrap >/dev/null 2>&1 || echo "min_versions: warning: bwrap not found; the coding env's sandbox tests need it" >&2

(cd "$tmp" && "$venv/bin/python" -c "import llm_coop_envs, pettingzoo; pettingzoo.make('parallel', 'coop_writing-v0')")
"$venv/bin/python" -m pytest tests/envs tests/test_registry.py -q -p no:cacheprovider
echo "min_versions: floors $(echo $floors) pass ($((SECONDS - start)) s)"
