#!/usr/bin/env bash
# Installs the Node dependencies of the gateway end-to-end tests (tests/node, driven by
# tests/python/test_gateway_js.py): the exact versions in package-lock.json, into tests/node/node_modules.
# Idempotent: does nothing when node_modules already matches the lock file. Installs Node.js and npm from
# Debian's packages when they are missing (the tests need Node >= 18).
#   bash tests/node/setup.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    command -v apt-get >/dev/null || die "need node and npm, and there is no apt-get to install them"
    log "apt-get install nodejs npm"
    as_root apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nodejs npm >/dev/null
fi
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 18 ] || die "node $(node --version) is too old for tests/node (need >= 18)"

# npm ci wipes and reinstalls node_modules: skip it when the installed tree was made from this very lock file.
stamp=node_modules/.tether-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f node_modules/centrifuge/dist/centrifuge.js ] \
    && [ -f node_modules/ws/package.json ]; then
    exit 0
fi
log "npm ci in tests/node"
npm ci --no-audit --no-fund --loglevel=error
[ -f node_modules/centrifuge/dist/centrifuge.js ] || die "npm ci did not install centrifuge"
echo "$want" > "$stamp"
