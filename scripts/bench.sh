#!/usr/bin/env bash
# The headline benchmarks in one command, on a fresh Debian machine as root with only Rust
# installed: builds the release binaries, then runs `bench relay`, `bench fanout` and
# `bench handshake` (DURATION measured seconds per target) with the echo limit and NATS
# measured in the same run, at the same message size and rate. Writes each report's JSON,
# Markdown table and SVG plot into bench-results/COMMIT/, then prints the combined table with
# the ratios CommuCat/NATS and CommuCat/echo (also saved as summary.md).
#
#   DURATION        measured seconds per target (default 30, at most 30)
#   WARMUP          warm-up seconds before each (default 2)
#   SIZE            message body bytes (default 1024)
#   RELAY_RATE      relay: messages per second over all pairs (default: half of CommuCat's
#                   closed-loop peak, measured first in the same run, `--half-max`)
#   PAIRS           relay: sender→recipient pairs (default 8)
#   FANOUT_RATE     fanout: messages published per second (default 5000, 80 000 copies/s;
#                   empty for `--half-max`)
#   GROUP           fanout: recipients per message (default 16)
#   FANOUT_TARGETS  fanout targets (default commucat,echo,nats)
#   SUITES          handshake suites (default xk,xk-hybrid)
#   OUT             results directory (default bench-results/COMMIT)
#
# On two or more CPUs the server runs on CPU 1 and the load on CPU 0. A target that fails is
# reported in its table and the summary, the other runs go on, and the script exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-30}"
WARMUP="${WARMUP:-2}"
SIZE="${SIZE:-1024}"
RELAY_RATE="${RELAY_RATE:-}"
PAIRS="${PAIRS:-8}"
FANOUT_RATE="${FANOUT_RATE-5000}"
GROUP="${GROUP:-16}"
FANOUT_TARGETS="${FANOUT_TARGETS:-commucat,echo,nats}"
SUITES="${SUITES:-xk,xk-hybrid}"

. scripts/packages.sh
ensure_packages build-essential pkg-config nats-server

cargo build --release --locked -p commucat -p commucat-bench --bins
commit="$(git describe --always --dirty --abbrev=12 2>/dev/null || echo unknown)"
OUT="${OUT:-bench-results/$commit}"
mkdir -p "$OUT"
bench=target/release/bench

pin=()
if [ "$(nproc)" -ge 2 ]; then
  pin=(--pin-server 1 --pin-load 0)
fi
common=(--duration "$DURATION" "${pin[@]}")
status=0
run() {
  local name="$1"
  shift
  printf '\n==> bench %s %s\n' "$name" "$*"
  if ! "$bench" "$name" "$@" --out "$OUT/$name.json" >"$OUT/$name.md"; then
    echo "bench $name: a target failed (see above and $OUT/$name.json)" >&2
    status=1
  fi
  cat "$OUT/$name.md"
}

# A fixed rate if one is given, else half of CommuCat's closed-loop peak (a low fixed rate
# measures wake-ups, not the servers).
rate() { if [ -n "$1" ]; then echo --rate "$1"; else echo --half-max; fi; }
run relay --target commucat,echo,nats --pairs "$PAIRS" --size "$SIZE" $(rate "$RELAY_RATE") \
  --warmup "$WARMUP" "${common[@]}"
run fanout --target "$FANOUT_TARGETS" --group "$GROUP" --size "$SIZE" $(rate "$FANOUT_RATE") \
  --warmup "$WARMUP" "${common[@]}"
run handshake --suites "$SUITES" "${common[@]}"

reports=()
for name in relay fanout handshake; do
  [ -f "$OUT/$name.json" ] && reports+=("$OUT/$name.json")
done
printf '\n==> summary (%s)\n\n' "$OUT/summary.md"
"$bench" summary "${reports[@]}" | tee "$OUT/summary.md"
exit "$status"
