#!/usr/bin/env bash
# Produces the replication figures of bench/RESULTS.md: for each shard count, a standalone broker
# and then a 3-broker HA cluster (`ringmq cluster`: primary + 2 backups, ha-replicate all) on
# loopback, the same `ringmq bench` workloads against each, three runs per workload, one line per
# run. Usage: bench/scripts/replicated.sh [SHARDS...] (default: 1 2).
set -uo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p ringmq >&2 || exit 1
ringmq=$PWD/target/release/ringmq
port=${RINGMQ_BENCH_PORT:-6500}
addr="127.0.0.1:$port"
echo "commit $(git rev-parse --short HEAD); $(nproc) cores; kernel $(uname -r); $(date -u +%FT%TZ)"

workloads() {
  local label=$1
  run() {
    for _ in 1 2 3; do
      printf '%s %s: ' "$label" "$*"
      if out=$($ringmq bench -b "$addr" "$@" 2>&1); then
        echo "$out" | grep -E 'throughput|confirm_us|lost' | tr -s ' ' | paste -sd ' '
      else
        echo "FAILED: $out"
      fi
    done
  }
  run --count 2000000 --size 1024
  run --count 2000000 --size 1024 --window 4000
  run --count 2000000 --size 1024 --consumers 0
  run --count 25000 --rate 5000 --size 1024
}

work=$(mktemp -d)
for shards in "${@:-1 2}"; do
  $ringmq broker --host 127.0.0.1 --port "$port" --shards "$shards" --pin-cores false > "$work/standalone.log" 2>&1 &
  broker=$!
  for _ in $(seq 100); do $ringmq queue list -b "$addr" > /dev/null 2>&1 && break; sleep 0.1; done
  workloads "standalone shards=$shards"
  kill $broker; wait $broker 2>/dev/null

  started=$(cd "$work" && $ringmq cluster --nodes 3 --base-port "$port" --shards "$shards") || { echo "$started"; exit 1; }
  pids=$(echo "$started" | sed -n 's/.*stop the cluster with: kill //p')
  workloads "replicated shards=$shards"
  $ringmq queue list -b "127.0.0.1:$((port + 1))" --ha-admin | sed "s/^/backup after the runs: /"
  kill $pids
  sleep 1
done
rm -rf "$work"
