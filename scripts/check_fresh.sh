#!/usr/bin/env bash
# The truth test: clone HEAD into an empty folder, then run the README's two commands there
# (`make run`, `make test`), each with the fresh virtualenv that `make` creates.
# Uncommitted changes are not in the clone: commit first. ../shared is linked beside the
# clone when it exists, as CI has it. Logs stay in the printed folder.
set -euo pipefail
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
work=$(mktemp -d "${TMPDIR:-/tmp}/embed_assets_fresh.XXXXXX")
echo "fresh clone of $(git -C "$repo" rev-parse --short HEAD) in $work"
git clone -q "$repo" "$work/main"
if [ -d "$repo/../shared" ]; then ln -s "$(cd "$repo/../shared" && pwd)" "$work/shared"; fi
cd "$work/main"
status=0
for target in run test; do
  start=$(date +%s)
  if make "$target" > "$work/$target.log" 2>&1; then result=passed; else result=FAILED; status=1; fi
  echo "make $target: $result in $(( $(date +%s) - start )) s (log: $work/$target.log)"
  tail -n 3 "$work/$target.log" | sed 's/^/    /'
done
exit $status
