#!/usr/bin/env bash
# `mnistlab study` on several revisions of mnistlab, taking turns, with tf.keras' batch-32 epoch of the
# final model before, between and after: an A/B measured in one run, against this machine's drift.
#
#   bash benchmarks/compare.sh DATA_DIR OUT_DIR REV... [-- ARGS for mnistlab study]
#   bash benchmarks/compare.sh ../shared/data/mnist /tmp/ab a44ba4c HEAD HEAD a44ba4c   # ABBA
#   bash benchmarks/compare.sh ../shared/data/mnist /tmp/ab HEAD -- --seeds 5
#
# Each study runs from a git worktree of its revision (a commit: changes not committed are not in it;
# removed at the end), with empty compile caches and a copy of this user's calibration, so that every
# revision trains the plan one measurement chose: run `mnistlab calibrate` first. It prints each study's
# seconds and, per stack, the runs that trained together with the seconds they recorded.
# WARM=1 keeps a revision's compile caches (torch's, and mnistlab's stored steps) from each of its
# studies to the next: its first study compiles, the later ones load what that one stored, as a user's
# second study on a machine does.
# The Python that runs mnistlab is PYTHON (default python3, with torch and mnistlab's dependencies);
# tf.keras runs in KERAS_PYTHON (default: PYTHON) where TensorFlow imports there, and is skipped otherwise.
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: bash benchmarks/compare.sh DATA_DIR OUT_DIR REV... [-- STUDY ARGS]" >&2; exit 2; }
data=$(realpath "$1") out=$(realpath -m "$2")
shift 2
revs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do revs+=("$1"); shift; done
[ $# -gt 0 ] && shift
python=${PYTHON:-python3} keras_python=${KERAS_PYTHON:-${PYTHON:-python3}}
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
calibration=${XDG_CACHE_HOME:-$HOME/.cache}/mnistlab/calibration
mkdir -p "$out"
added=()
trap 'for tree in "${added[@]}"; do git -C "$repo" worktree remove --force "$tree"; done' EXIT

keras() {
    if "$keras_python" -c "import tensorflow" 2>/dev/null; then
        echo "tf.keras ($(date +%H:%M)): $("$keras_python" "$repo/benchmarks/speed.py" --keras --batches 32 \
            --stacks 1 --precisions fp32 --data-dir "$data" 2>/dev/null | tail -n 1)"
    else
        echo "tf.keras: skipped, no tensorflow in $keras_python"
    fi
}

study() {  # run number, revision, study args...
    local number=$1 rev=$2 commit
    shift 2
    commit=$(git -C "$repo" rev-parse --short "$rev")
    local src=$out/src-$commit run=$out/run-$number-$commit
    if [ ! -d "$src" ]; then
        git -C "$repo" worktree add --detach --quiet "$src" "$commit"
        added+=("$src")
        rm -rf "$out/caches-$commit"  # a revision's first study here compiles, even in an OUT_DIR used before
    fi
    local caches=$run
    [ "${WARM:-0}" = 1 ] && caches=$out/caches-$commit
    rm -rf "$run"
    mkdir -p "$run"
    if [ ! -d "$caches/cache/mnistlab" ]; then
        mkdir -p "$caches/cache/mnistlab"
        [ -d "$calibration" ] && cp -r "$calibration" "$caches/cache/mnistlab/"
    fi
    local start=$SECONDS status=0
    XDG_CACHE_HOME=$caches/cache TORCHINDUCTOR_CACHE_DIR=$caches/inductor PYTHONPATH=$src/src \
        "$python" -m mnistlab.cli study --out "$run/study" --data-dir "$data" --quiet "$@" \
        >"$run/log" 2>&1 || status=$?
    echo "study $number, $rev ($commit), $(date +%H:%M): $((SECONDS - start)) s, exit $status"
    "$python" - "$run/study" <<'EOF'
import collections, json, pathlib, sys
stacks = collections.defaultdict(list)  # a stack's runs record its wall time, to the last bit
for metrics in sorted(pathlib.Path(sys.argv[1]).rglob("metrics.json")):
    record = json.loads(metrics.read_text())
    stacks[record["wall_seconds"]].append(f"{record['preset']} ({record['seed']})")
for seconds, runs in sorted(stacks.items(), reverse=True):
    print(f"  {seconds:8.1f} s  {', '.join(runs)}")
EOF
}

lscpu | grep "Model name" || true
keras
for i in "${!revs[@]}"; do
    study "$((i + 1))" "${revs[$i]}" "$@"
    keras
done
