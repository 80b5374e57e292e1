#!/usr/bin/env sh
# Runs the Dagster daemon (sensors, schedules, run queue) and the webserver side by side.
# WORKSPACE, HOST and PORT can be overridden (the test suite runs this script on loopback).
set -eu
workspace="${WORKSPACE:-/app/workspace.yaml}"
# Create the instance's SQLite storage once, before the two processes start: started together on an
# empty DAGSTER_HOME they both stamp its schema and can leave two alembic heads, after which neither
# can open the instance again (dagster-io/dagster#27390). Idempotent on an existing instance.
if [ -n "${DAGSTER_HOME:-}" ]; then
    dagster instance migrate >/dev/null
fi
dagster-daemon run -w "$workspace" &
daemon=$!
trap 'kill "$daemon" 2>/dev/null' EXIT INT TERM
dagster-webserver -h "${HOST:-0.0.0.0}" -p "${PORT:-3000}" -w "$workspace" &
webserver=$!
trap 'kill "$daemon" "$webserver" 2>/dev/null' EXIT INT TERM
# Exit (and let the container restart policy act) as soon as either process dies.
while kill -0 "$daemon" 2>/dev/null && kill -0 "$webserver" 2>/dev/null; do
    sleep 2
done
exit 1
