#!/usr/bin/env bash
# Installs Bun from the npm registry (@oven/bun-linux-x64) into benches/bun/node_modules; prints its path.
set -euo pipefail
cd "$(dirname "$0")"
bin=node_modules/@oven/bun-linux-x64/bin/bun
[ -x "$bin" ] || npm install --no-audit --no-fund >/dev/null
echo "$PWD/$bin"
