#!/usr/bin/env sh
# Runs the Dagster daemon (sensors, schedules, run queue) and the webserver side by side.
# WORKSPACE, HOST, PORT and DAGSTER_YAML_TEMPLATE can be overridden (the test suite runs this script on loopback).
set -eu
# With arguments, run them instead: Dagster's Helm chart and dagster-k8s start the code server, run
# pods and step pods of this image with arguments only (`dagster api grpc ...`, `dagster api execute_step ...`).
if [ "$#" -gt 0 ]; then
    exec "$@"
fi
workspace="${WORKSPACE:-/app/workspace.yaml}"
# With DAGSTER_PG_HOST set and no instance config of its own, the instance is deploy/dagster.yaml:
# PostgreSQL storage from the DAGSTER_PG_* variables, a run queue, one run per artifact home.
if [ -n "${DAGSTER_PG_HOST:-}" ] && [ -n "${DAGSTER_HOME:-}" ] && [ ! -s "$DAGSTER_HOME/dagster.yaml" ]; then
    cp "${DAGSTER_YAML_TEMPLATE:-/app/deploy/dagster.yaml}" "$DAGSTER_HOME/dagster.yaml"
fi
# Create the instance's storage once, before the two processes start: started together on an
# empty DAGSTER_HOME they both stamp its schema and can leave two alembic heads, after which neither
# can open the instance again (dagster-io/dagster#27390). Idempotent on an existing instance.
if [ -n "${DAGSTER_HOME:-}" ]; then
    dagster instance migrate >/dev/null
    # An instance that limits pools per run (deploy/dagster.yaml) gets the home pool's limit now: the
    # queue daemon would create it from default_limit only after dequeuing its first batch, so the
    # first two runs queued together could start together.
    if grep -q "granularity: run" "$DAGSTER_HOME/dagster.yaml" 2>/dev/null; then
        dagster instance concurrency set embed_assets_home 1 >/dev/null
    fi
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
