#!/usr/bin/env bash
# gsocket at two revisions, measured in interleaved rounds (A, B, A, B, ...) on this machine:
# how a change's "before" and "after" are compared when no Node server needs to run beside them.
#
#   benchmarks/compare_revisions.sh REV_A REV_B [ROUNDS] [run.py options...]
#
# Each revision is checked out into a temporary git worktree and runs its own benchmarks/run.py
# with `--servers gsocket --pairs 1` (default `--sizes 1000 --frappe-ctx 0`) once per round; the
# results of each go to benchmarks/results/compare/<rev>/ as one jsonl per round.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
a="$1" b="$2" rounds="${3:-3}"
shift $(($# < 3 ? $# : 3))
options=("$@")
[ ${#options[@]} -gt 0 ] || options=(--sizes 1000 --frappe-ctx 0)
work="$(mktemp -d)"
trap 'git -C "$repo" worktree remove --force "$work/a" 2>/dev/null || true; git -C "$repo" worktree remove --force "$work/b" 2>/dev/null || true; rm -rf "$work"' EXIT
git -C "$repo" worktree add -q --detach "$work/a" "$a"
git -C "$repo" worktree add -q --detach "$work/b" "$b"
if [ -d "$repo/benchmarks/loadgen/node_modules" ]; then  # else each run.py installs its own
  for side in a b; do
    ln -s "$repo/benchmarks/loadgen/node_modules" "$work/$side/benchmarks/loadgen/node_modules"
  done
fi
for round in $(seq "$rounds"); do
  for side in a b; do
    rev=$([ "$side" = a ] && echo "$a" || echo "$b")
    echo "== $rev, round $round, $(date +%T), load $(cut -d' ' -f1-3 /proc/loadavg)"
    (cd "$work/$side" && python3 benchmarks/run.py --servers gsocket --pairs 1 "${options[@]}" \
      --results-dir "$repo/benchmarks/results/compare/$rev")
  done
done
