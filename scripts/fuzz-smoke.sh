#!/usr/bin/env bash
# A bounded smoke run of every cargo-fuzz target in fuzz/ (scripts/test.sh calls it):
#   bash scripts/fuzz-smoke.sh [TARGET...]
# Builds the targets (nightly, address sanitizer; cargo-fuzz is installed if missing), then fuzzes each for
# FUZZ_SECONDS (default 8) starting from a copy of its seed corpus (fuzz/corpus/<target>/), so what the run
# finds never lands in the committed seeds. Prints the executions per target; exits non-zero if any target
# crashed, timed out or ran out of memory (the input is kept in fuzz/artifacts/<target>/, ignored by git).
#
# Cost: about a minute of fuzzing, plus the build. The smoke run builds with `--dev` (fuzz/Cargo.toml's dev
# profile: opt-level 1, many codegen units): about 2/3 of the CPU of cargo-fuzz's optimized build with one
# codegen unit (~10 min from clean on 2 cores), at 2,600 (deflate) to 87,000 (frame) executions per target in
# 8 s, which is plenty for a smoke run; the long runs of BENCHMARKS.md use the optimized build
# (FUZZ_RELEASE=1 here). Seconds when fuzz/target is kept. TETHER_SKIP_FUZZ=1 skips it all; FUZZ_BUILD_ONLY=1
# builds and stops (scripts/test.sh builds that way, niced, while the other tests run, then runs this again).
#
# A long run of one target: copy its seeds to a scratch directory, then
#   cd fuzz && cargo +nightly fuzz run TARGET SCRATCH -- -runs=10000000
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

if [ "${TETHER_SKIP_FUZZ:-0}" = 1 ]; then
    log "fuzz smoke run skipped (TETHER_SKIP_FUZZ=1)"
    exit 0
fi

SECONDS_EACH=${FUZZ_SECONDS:-8}
# Fuzz builds use their own flags (sanitizer, coverage): they live in fuzz/target, never in the main target dir.
unset CARGO_TARGET_DIR
CARGO_FUZZ_VERSION=0.12.0
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(http_upgrade frame conn_server conn_client gateway_command jwt deflate tls)
fi

# --- toolchain: cargo-fuzz needs nightly (-Zsanitizer); without one, stable with RUSTC_BOOTSTRAP=1 ----------
TOOLCHAIN=()
if command -v rustup >/dev/null && rustup toolchain list | grep -q '^nightly'; then
    TOOLCHAIN=(+nightly)
else
    log "WARNING: no nightly Rust toolchain (rustup toolchain install nightly); fuzzing with the default" \
        "toolchain and RUSTC_BOOTSTRAP=1, which lets a stable compiler take nightly flags"
    export RUSTC_BOOTSTRAP=1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "cargo install cargo-fuzz --locked --version $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

# --- build ---------------------------------------------------------------------------------------------
PROFILE=(--dev)
[ "${FUZZ_RELEASE:-0}" = 1 ] && PROFILE=()
log "cargo ${TOOLCHAIN[*]} fuzz build ${PROFILE[*]} (fuzz/target)"
(cd fuzz && cargo "${TOOLCHAIN[@]}" fuzz build "${PROFILE[@]}")
if [ "${FUZZ_BUILD_ONLY:-0}" = 1 ]; then
    log "fuzz targets built (FUZZ_BUILD_ONLY=1)"
    exit 0
fi

# --- run -----------------------------------------------------------------------------------------------
failed=()
summary=()
for target in "${TARGETS[@]}"; do
    [ -d "fuzz/corpus/$target" ] || die "no seed corpus fuzz/corpus/$target"
    work="$ROOT/fuzz/target/smoke-corpus/$target"
    rm -rf "$work"
    mkdir -p "$work"
    cp -- fuzz/corpus/"$target"/* "$work"/
    log "fuzz $target for ${SECONDS_EACH}s"
    output="$ROOT/fuzz/target/smoke-$target.log"
    if (cd fuzz && cargo "${TOOLCHAIN[@]}" fuzz run "${PROFILE[@]}" "$target" "$work" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1) >"$output" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$target")
        tail -n 40 "$output" >&2
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$output" | tail -n 1)
    cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$output" | tail -n 1)
    summary+=("$(printf '%-16s %-6s %10s executions  %s' "$target" "$status" "${runs:-?}" "$cov")")
done

printf '%s\n' "${summary[@]}" >&2
if [ ${#failed[@]} -gt 0 ]; then
    log "FUZZING FAILED: ${failed[*]} (inputs in fuzz/artifacts/; replay: cd fuzz && cargo +nightly fuzz run TARGET FILE)"
    exit 1
fi
log "fuzz smoke run passed"
