#!/usr/bin/env bash
# Builds and starts CommuCat on a fresh Debian machine as root with only Rust installed.
#
#   scripts/run.sh            `commucat serve`: listens on 0.0.0.0:7443, keeps its key and data
#                             in ./commucat-data (created on first start), prints the public key
#                             clients need; Ctrl-C stops it gracefully
#   scripts/run.sh <args>     runs `commucat <args>`, e.g. `scripts/run.sh serve --help`
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/packages.sh
ensure_packages build-essential pkg-config

cargo build --release --locked -p commucat
if [ "$#" -eq 0 ]; then
  set -- serve
fi
exec target/release/commucat "$@"
