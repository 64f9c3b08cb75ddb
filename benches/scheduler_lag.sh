#!/usr/bin/env bash
# Scheduling lag: N datasets with an every-minute cron, two scheduler replicas, M minutes, against
# the local PostgreSQL and Redis. Prints, per fire time, how many jobs were enqueued (must equal N,
# once each) and how late (enqueued_at - scheduled_for: p50, p99, max).
# Usage: benches/scheduler_lag.sh [datasets=1000] [minutes=3] [profile=release|dev] [redis|embedded]
# (`embedded`: the SQLite catalog and queue of `carga serve`, no servers needed)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/carga-target}"
# `--workspace` (not `-p`): the features the rest of the workspace builds with, so nothing rebuilds.
profile="${3:-release}"
if [ "$profile" = release ]; then
  cargo build -q --release --workspace --example cron_lag
  bin="$CARGO_TARGET_DIR/release/examples/cron_lag"
else
  cargo build -q --workspace --example cron_lag
  bin="$CARGO_TARGET_DIR/debug/examples/cron_lag"
fi
"$bin" "${1:-1000}" "${2:-3}" "${4:-redis}"
