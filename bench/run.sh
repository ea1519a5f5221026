#!/usr/bin/env bash
# The reload benchmark in one command (see README.md, "Reload benchmark"):
#   bench/run.sh            # full run, ~30 min: results in bench/results/
#   bench/run.sh --quick    # smoke run, seconds
# Extra arguments go to reload-bench (e.g. --out DIR, --haproxy PATH, storm|latency|...).
set -euo pipefail
cd "$(dirname "$0")/.."
args=("$@")
has_scenario=false
for a in "${args[@]}"; do
    case "$a" in all|storm|ab|latency|handoff|crash|footprint|overhead) has_scenario=true ;; esac
done
$has_scenario || args=(all "${args[@]}")
exec cargo run --release -p reload-bench -- "${args[@]}"
