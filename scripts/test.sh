#!/usr/bin/env bash
# The whole CommuCat test suite, as CI runs it (`.ci/run` calls this script).
# Works on a fresh Debian machine as root with only Rust installed: it installs what it needs.
# Fast checks first; stops at the first failure.
#
#   FUZZ_SECONDS   seconds per fuzz target in the smoke run (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
step() { printf '\n==> %s\n' "$*"; }

step "system packages"
. scripts/packages.sh
ensure_packages build-essential pkg-config python3 python3-pip python3-venv nats-server
# PostgreSQL server binaries for the control-store conformance and crash tests (not started
# as a service: scripts/postgres.sh runs a private throwaway server below).
ensure_packages postgresql

step "Rust components"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

step "cargo fmt --check"
cargo fmt --all --check
(cd fuzz && cargo fmt --all --check)

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "throwaway PostgreSQL for the storage tests (scripts/postgres.sh)"
COMMUCAT_TEST_POSTGRES_URL="$(scripts/postgres.sh start)"
export COMMUCAT_TEST_POSTGRES_URL
trap 'scripts/postgres.sh stop "$COMMUCAT_TEST_POSTGRES_URL"' EXIT
echo "$COMMUCAT_TEST_POSTGRES_URL"

step "cargo nextest (unit, property, vectors, layering, CLI, storage on SQLite and PostgreSQL)"
mkdir -p target
cargo nextest run --workspace --locked --no-fail-fast 2>&1 | tee target/nextest.log

step "rustdoc, warnings denied (broken links included)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked -q

step "independent implementation of the protocol vectors (Python)"
venv=target/interop-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q -r tools/interop/requirements.txt
"$venv/bin/python" tools/interop/verify_vectors.py docs/PROTOCOL.md

step "fuzz smoke: ${FUZZ_SECONDS}s per target"
for target in $(cd fuzz && cargo +nightly fuzz list); do
  mkdir -p "fuzz/corpus/$target"
  seeds=()
  [ -d "fuzz/seeds/$target" ] && seeds=("fuzz/seeds/$target")
  (cd fuzz && cargo +nightly fuzz run "$target" "corpus/$target" "${seeds[@]/#fuzz\//}" -- \
     -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 2>&1 | tail -n 4)
done

# One plain closing line: the test count from nextest (every other step has passed too).
passed=$(grep -oE '[0-9]+ tests run: [0-9]+ passed' target/nextest.log | grep -oE '[0-9]+ passed' | tail -n 1)
echo
echo "all checks passed"
echo "tests: ${passed:-0 passed}, 0 failed"
