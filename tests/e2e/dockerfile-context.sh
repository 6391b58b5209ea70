#!/usr/bin/env bash
# No container engine runs here, so check the part of the Dockerfile that breaks most often:
# the build stage must COPY everything cargo needs. Copies exactly what the build stage's COPY
# lines name into an empty directory and runs the same cargo command there (as `check`,
# sharing the target directory, so it takes seconds).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
# COPY lines of the first (build) stage: between the first FROM and the next FROM.
# "COPY a b ./" copies several sources; the last word is the destination.
awk '/^FROM /{n++} n==1 && /^COPY /{for (i = 2; i < NF; i++) print $i}' "$root/Dockerfile" |
  while read -r src; do cp -r "$root/$src" "$ctx/"; done
cd "$ctx"
CARGO_TARGET_DIR="$root/target" cargo check --locked --offline --bin balena-exporter --quiet
echo "Dockerfile build context: ok ($(find "$ctx" -mindepth 1 -maxdepth 1 -printf '%f ' ))"
