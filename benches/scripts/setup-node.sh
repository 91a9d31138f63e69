#!/usr/bin/env bash
# Installs the Node.js peer's dependencies (the `ws` package) into benches/node/node_modules.
set -euo pipefail
cd "$(dirname "$0")/../node"
npm install --no-audit --no-fund
