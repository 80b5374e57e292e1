#!/usr/bin/env sh
# Runs the Dagster daemon (sensors, schedules, run queue) and the webserver side by side.
# WORKSPACE, HOST and PORT can be overridden (the test suite runs this script on loopback).
set -eu
workspace="${WORKSPACE:-/app/workspace.yaml}"
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
