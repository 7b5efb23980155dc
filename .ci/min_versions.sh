#!/usr/bin/env bash
# Floor job: install llm_coop_envs with exactly the lowest dependency versions it claims to support
# (constraints-min.txt) in a throwaway virtualenv, then import it and run the env tests with them.
# Needs python3 (or $PYTHON) with pip, and bubblewrap (bwrap) for the coding env's sandbox (.ci/run installs
# it). The floors ship wheels for Python 3.10 and 3.11 only (numpy 1.23.2); the job refuses newer Pythons
# rather than build numpy from source.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
start=$SECONDS
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 11))'; then
  echo "min_versions: $("$PYTHON" --version 2>&1): the floors in constraints-min.txt need Python 3.10 or 3.11;" \
    "run with PYTHON=python3.11" >&2
  exit 2
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/llm-coop-min.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
venv=$tmp/venv

# python3 -m venv needs ensurepip, which some distributions ship separately (python3-venv): without it,
# make a venv without pip and drive the host's pip at it.
if [ -z "${MIN_VERSIONS_NO_ENSUREPIP:-}" ] && "$PYTHON" -m venv "$venv" >/dev/null 2>&1; then
  pip=("$venv/bin/python" -m pip)
else
  rm -rf "$venv"
  "$PYTHON" -m venv --without-pip "$venv"
  pip=("$PYTHON" -m pip --python "$venv/bin/python")
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1

floors=$(grep -Ev '^[[:space:]]*(#|$)' constraints-min.txt)
# Wheels only: a floor without a wheel for this Python fails here instead of compiling for minutes.
# shellcheck disable=SC2086
"${pip[@]}" install -q --only-binary=:all: $floors "pytest>=8"
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
echo "min_versions: env floors $(echo $floors) pass ($((SECONDS - start)) s)"

# The learners' floors (constraints-min-train.txt) on top, with the pinned CPU torch, and the learner tests.
train_floors=$(grep -Ev '^[[:space:]]*(#|$)' constraints-min-train.txt)
"${pip[@]}" install -q -c constraints.txt "torch==2.13.0"
# shellcheck disable=SC2086
"${pip[@]}" install -q --only-binary=:all: -c constraints.txt $train_floors
"$venv/bin/python" - "$repo/constraints-min-train.txt" <<'PY'
import sys
from importlib.metadata import version

bad = [f"{n}: installed {version(n)}, floor {w}" for n, w in
       (l.split("#", 1)[0].strip().split("==") for l in open(sys.argv[1]) if l.split("#", 1)[0].strip())
       if version(n) != w]
if bad:
    sys.exit("train floors not installed exactly:\n  " + "\n  ".join(bad))
PY
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 \
  "$venv/bin/python" -m pytest tests/baselines -q -p no:cacheprovider -x
echo "min_versions: train floors $(echo $train_floors) pass ($((SECONDS - start)) s)"
