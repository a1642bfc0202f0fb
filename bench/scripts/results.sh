#!/usr/bin/env bash
# Produces the figures of bench/RESULTS.md: starts a broker on loopback for each configuration,
# runs `ringmq bench` three times per workload, and prints one line per run plus the broker's
# RSS after each configuration. Usage: bench/scripts/results.sh [SHARDS...] (default: 1 2).
set -uo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p ringmq >&2 || exit 1
ringmq=target/release/ringmq
port=${RINGMQ_BENCH_PORT:-6400}
addr="127.0.0.1:$port"
echo "commit $(git rev-parse --short HEAD); $(nproc) cores; kernel $(uname -r); $(date -u +%FT%TZ)"

for shards in "${@:-1 2}"; do
  log=$(mktemp)
  $ringmq broker --host 127.0.0.1 --port "$port" --shards "$shards" > "$log" 2>&1 &
  broker=$!
  trap 'kill $broker 2>/dev/null' EXIT
  for _ in $(seq 100); do $ringmq queue list -b "$addr" > /dev/null 2>&1 && break; sleep 0.1; done
  # With one shard (pinned to CPU 0), the load generator runs on CPU 1, as in the ceiling runs.
  pin=""
  [ "$shards" = 1 ] && pin="taskset -c 1"
  run() {
    for _ in 1 2 3; do
      printf 'shards=%s %s: ' "$shards" "$*"
      if out=$($pin $ringmq bench -b "$addr" "$@" 2>&1); then
        echo "$out" | grep -E 'throughput|confirm_us|e2e_us' | tr -s ' ' | paste -sd ' '
      else
        echo "FAILED: $out"
      fi
    done
  }
  run --count 2000000 --size 1024
  run --count 5000000 --size 128
  run --count 5000000 --size 128 --window 4000
  run --count 25000 --rate 5000 --size 1024
  run --count 25000 --rate 5000 --size 128
  echo "shards=$shards broker RSS after the runs: $(ps -o rss= -p $broker) KiB"
  if ! kill -0 "$broker" 2>/dev/null; then echo "broker exited:"; cat "$log"; fi
  kill $broker
  wait $broker 2>/dev/null || true
done
