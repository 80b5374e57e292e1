#!/usr/bin/env sh
# Runs the Dagster daemon (sensors, schedules, run queue) and the webserver side by side.
set -eu
dagster-daemon run -w /app/workspace.yaml &
daemon=$!
trap 'kill "$daemon" 2>/dev/null' EXIT INT TERM
exec dagster-webserver -h 0.0.0.0 -p "${PORT:-3000}" -w /app/workspace.yaml
