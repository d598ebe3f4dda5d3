#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests and benchmarks, private to the caller.
#
#   scripts/postgres.sh start        initdb + pg_ctl start in a new temporary directory; prints
#                                    the URL (postgres://...?host=DIR&port=PORT) on stdout
#   scripts/postgres.sh stop URL|DIR pg_ctl stop (fast) and remove the directory
#
# The server listens on a unix socket inside its own temporary directory only (no TCP), on a
# free port number (the port names the socket file), with trust authentication for the local
# user `postgres`. fsync stays on: benchmarks measure real durable commits.
# initdb refuses to run as root, so as root the server runs as the `postgres` system user
# (created by Debian's postgresql packages, which this script installs when the binaries are
# missing).
set -euo pipefail

find_bindir() {
  local dir
  if command -v pg_config >/dev/null 2>&1; then
    dir="$(pg_config --bindir)"
    [ -x "$dir/initdb" ] && { echo "$dir"; return; }
  fi
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && { echo "$dir"; return; }
  done
  return 1
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  local port
  for _ in $(seq 1 50); do
    port=$(( 20000 + RANDOM % 40000 ))
    # The socket is private to our directory, so only a TCP listener on the port could clash
    # with a later switch to TCP; checking keeps the number unique on the machine anyway.
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
  done
  return 1
}

start() {
  local bindir dir port
  if ! bindir="$(find_bindir)"; then
    if [ "$(id -u)" = 0 ]; then
      . "$(dirname "$0")/packages.sh"
      ensure_packages postgresql >&2
      bindir="$(find_bindir)"
    else
      echo "postgres.sh: PostgreSQL binaries not found; install the Debian package postgresql" >&2
      exit 1
    fi
  fi
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/postgresql --shell /usr/sbin/nologin postgres
  fi
  dir="$(mktemp -d /tmp/commucat-pg.XXXXXX)"
  chmod 0700 "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  port="$(free_port)"
  as_owner "$bindir/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 -N \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; rm -rf "$dir"; exit 1; }
  as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses='' -k $dir -p $port -c max_connections=200" start >/dev/null \
    || { cat "$dir/server.log" >&2; rm -rf "$dir"; exit 1; }
  echo "postgres://postgres@/postgres?host=$dir&port=$port"
}

stop() {
  local arg="${1:?usage: postgres.sh stop URL|DIR}" dir bindir
  case "$arg" in
    postgres://*|postgresql://*) dir="$(sed -E 's/.*[?&]host=([^&]*).*/\1/' <<<"$arg")" ;;
    *) dir="$arg" ;;
  esac
  case "$dir" in
    /tmp/commucat-pg.*) ;;
    *) echo "postgres.sh: refusing to stop '$dir' (not a directory this script made)" >&2; exit 1 ;;
  esac
  if [ -d "$dir/data" ] && bindir="$(find_bindir)"; then
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:-}" ;;
  *) echo "usage: $0 start | stop URL|DIR" >&2; exit 2 ;;
esac
