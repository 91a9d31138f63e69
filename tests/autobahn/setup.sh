#!/usr/bin/env bash
# Installs the Autobahn|Testsuite fuzzing client (`wstest -m fuzzingclient`) for Python 3 into a venv.
#
#   bash tests/autobahn/setup.sh            # venv in tests/autobahn/.venv (git-ignored)
#   AUTOBAHN_VENV=/opt/autobahn-venv bash tests/autobahn/setup.sh
#
# Upstream autobahntestsuite is Python 2 only. This script downloads two pinned sdists from PyPI
# (pip checks their sha256), converts the testsuite with 2to3, applies the two patch files beside
# this script (what 2to3 cannot do: bytes/str at the wire, py3 bugs in autobahn 0.10.9), and installs
# both into the venv with Twisted/zope.interface/six/txaio from PyPI. See README.md beside this file.
# Idempotent: a stamp (hash of this script and the patches) skips the work when nothing changed.
# Prints the path of the venv's `wstest` on success.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=${AUTOBAHN_VENV:-$HERE/.venv}
PY=${AUTOBAHN_PYTHON:-python3}

TESTSUITE_VERSION=25.10.1
TESTSUITE_SHA256=b083d6e15330fc16f3e5f0975cce2b15f21bfa0c6db09547316b1852c6dbd6df
AUTOBAHN_VERSION=0.10.9
AUTOBAHN_SHA256=3fecc1e2a26a0421128ddcfb4e577f0bc669dd65d0e0fdad1c773965cbcef75a
# Runtime deps, pinned to the versions this was validated with (Python 3.11).
DEPS=(Twisted==26.10.0 zope.interface==8.7 six==1.17.0 txaio==2.1.0)

log() { printf '==> %s\n' "$*" >&2; }

stamp=$(cat "$0" "$HERE"/*.patch | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/wstest" ] && [ "$(cat "$VENV/.tether-autobahn-stamp" 2>/dev/null)" = "$stamp" ] \
    && "$VENV/bin/python" -c 'import autobahntestsuite.fuzzing' 2>/dev/null; then
    echo "$VENV/bin/wstest"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv $VENV"
    "$PY" -m venv "$VENV"
fi
VPY=$VENV/bin/python
PIP=("$VPY" -m pip -q --disable-pip-version-check)

log "installing ${DEPS[*]}"
"${PIP[@]}" install "${DEPS[@]}"
# autobahn's own accelerator (upstream's autobahn[accelerate]): C masking and UTF-8 validation. Without
# it everything still works, but the 9.* and 12.*/13.* cases take many times longer.
"${PIP[@]}" install wsaccel==0.6.7 || log "wsaccel not installed: pure-Python masking (slow)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/req.txt" <<EOF
autobahntestsuite==$TESTSUITE_VERSION --hash=sha256:$TESTSUITE_SHA256
autobahn==$AUTOBAHN_VERSION --hash=sha256:$AUTOBAHN_SHA256
EOF
log "downloading autobahntestsuite $TESTSUITE_VERSION and autobahn $AUTOBAHN_VERSION sdists (sha256-checked)"
"${PIP[@]}" download --no-deps --no-binary :all: --require-hashes -r "$WORK/req.txt" -d "$WORK/dl"

cd "$WORK"
tar xzf "dl/autobahntestsuite-$TESTSUITE_VERSION.tar.gz"
tar xzf "dl/autobahn-$AUTOBAHN_VERSION.tar.gz"
TS=$WORK/autobahntestsuite-$TESTSUITE_VERSION
AB=$WORK/autobahn-$AUTOBAHN_VERSION
# The testsuite ships CRLF sources: normalize so the (LF) patch applies.
find "$TS" "$AB" -name '*.py' -exec sed -i 's/\r$//' {} +

apply() { # apply PATCH into DIR (git apply works outside a repository; patch(1) as fallback)
    if command -v git >/dev/null; then
        (cd "$2" && git apply -p1 --whitespace=nowarn "$1")
    else
        patch -d "$2" -p1 --quiet <"$1"
    fi
}

log "patching and installing autobahn $AUTOBAHN_VERSION"
apply "$HERE/autobahn-$AUTOBAHN_VERSION-py3.patch" "$AB"
"${PIP[@]}" install --no-deps "$AB"

log "converting autobahntestsuite to Python 3 (2to3) and patching"
if "$VPY" -c 'import lib2to3' 2>/dev/null; then
    "$VPY" -W ignore -m lib2to3 -w -n "$TS/autobahntestsuite" >"$WORK/2to3.log" 2>&1
else # Python >= 3.13 has no lib2to3: fissix is its maintained fork
    "${PIP[@]}" install fissix==24.4.24
    "$VPY" -c 'import sys; from fissix.main import main; sys.exit(main("fissix.fixes"))' \
        -w -n "$TS/autobahntestsuite" >"$WORK/2to3.log" 2>&1
fi
apply "$HERE/autobahntestsuite-$TESTSUITE_VERSION-py3.patch" "$TS"
"${PIP[@]}" install --no-deps "$TS"

"$VPY" -c 'import autobahntestsuite.fuzzing' >/dev/null
echo "$stamp" >"$VENV/.tether-autobahn-stamp"
log "installed: $VENV/bin/wstest"
echo "$VENV/bin/wstest"
