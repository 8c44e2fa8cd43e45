#!/bin/sh
# Create everything examples/postgres/oomguard.toml expects, under one base directory:
#
#   $BASE/pgdata/          the PostgreSQL cluster (initdb), database "bench" with table "ledger"
#   $BASE/run/             unix sockets of postgres (5432) and pgbouncer (6432)
#   $BASE/pgbouncer.ini    pgbouncer's config, paths rewritten for $BASE
#   $BASE/userlist.txt     pgbouncer's auth file
#   $BASE/backup-job.sh    the backup sidecar (and storm.py beside it), by absolute path: a
#                          service starts in its user's home, not in this repository
#
# Usage (as root, because the cluster belongs to the "postgres" user):
#
#   examples/postgres/init-db.sh [BASE]      # default BASE: /var/lib/oomguard-example
#
# Environment: OOMGUARD_PG_BASE (instead of the argument), PG_BIN (default: the newest
# /usr/lib/postgresql/*/bin), PG_USER (postgres), SHARED_BUFFERS (64MB), PG_PORT (5432),
# PGBOUNCER_PORT (6432), FORCE=1 to throw away an existing $BASE/pgdata.
#
# The cluster trusts local connections over the unix socket only (listen_addresses = ''):
# this is a demo database, reachable through pgbouncer or `psql -h $BASE/run`.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
DEFAULT_BASE=/var/lib/oomguard-example
BASE=${1:-${OOMGUARD_PG_BASE:-$DEFAULT_BASE}}
PG_USER=${PG_USER:-postgres}
SHARED_BUFFERS=${SHARED_BUFFERS:-64MB}
PG_PORT=${PG_PORT:-5432}
PGBOUNCER_PORT=${PGBOUNCER_PORT:-6432}
if [ -z "${PG_BIN:-}" ]; then
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
fi

die() { echo "init-db: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run me as root (the cluster is created as user $PG_USER)"
[ -n "$PG_BIN" ] && [ -x "$PG_BIN/initdb" ] ||
    die "no PostgreSQL binaries (set PG_BIN; Debian: apt-get install postgresql)"
id "$PG_USER" >/dev/null 2>&1 || die "no user $PG_USER (Debian's postgresql package creates it)"
case $BASE in /*) ;; *) die "BASE must be an absolute path, not $BASE" ;; esac

as_pg() { runuser -u "$PG_USER" -- "$@"; }

PGDATA=$BASE/pgdata
if [ -e "$PGDATA/PG_VERSION" ]; then
    [ "${FORCE:-0}" = 1 ] || die "$PGDATA already holds a cluster (FORCE=1 replaces it)"
    rm -rf "$PGDATA"
fi
mkdir -p "$BASE/run"
chown "$PG_USER:" "$BASE" "$BASE/run"
chmod 0755 "$BASE"

# --no-sync: the cluster is fresh and disposable; a crash during init means running this again.
as_pg "$PG_BIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C --no-sync \
    >"$BASE/initdb.log" 2>&1 || { cat "$BASE/initdb.log" >&2; die "initdb failed"; }

# POSIX dynamic shared memory needs a writable /dev/shm; a minimal VM or chroot may have none.
DSM=posix
if ! [ -d /dev/shm ] || ! [ -w /dev/shm ]; then
    DSM=mmap
fi

cat >>"$PGDATA/postgresql.conf" <<EOF

# --- examples/postgres/init-db.sh ---
listen_addresses = ''                  # unix socket only; clients come through pgbouncer
port = $PG_PORT
unix_socket_directories = '$BASE/run'
max_connections = 40
shared_buffers = $SHARED_BUFFERS       # small: this is a demo next to its sidecars
dynamic_shared_memory_type = $DSM
huge_pages = off
log_line_prefix = '%m [%p] '           # timestamps, to line the log up with oomguard's events
log_checkpoints = off
# The default: a backend killed by the OOM killer makes the postmaster end every session and
# reinitialize (crash recovery) instead of going down with it.
restart_after_crash = on
EOF

# Single-user mode: no server, no socket, no waiting for startup; one statement per line.
printf '%s\n' "CREATE DATABASE bench;" |
    as_pg "$PG_BIN/postgres" --single -D "$PGDATA" postgres >/dev/null
printf '%s\n' \
    "CREATE TABLE ledger (id bigserial PRIMARY KEY, client int NOT NULL, at timestamptz NOT NULL DEFAULT now());" |
    as_pg "$PG_BIN/postgres" --single -D "$PGDATA" bench >/dev/null

# pgbouncer: the checked-in config with the default base directory replaced by ours.
sed -e "s#$DEFAULT_BASE#$BASE#g" \
    -e "s#^listen_port = .*#listen_port = $PGBOUNCER_PORT#" \
    -e "s#port=5432#port=$PG_PORT#g" \
    "$HERE/pgbouncer.ini" >"$BASE/pgbouncer.ini"
cp "$HERE/userlist.txt" "$BASE/userlist.txt"
cp "$HERE/backup-job.sh" "$HERE/storm.py" "$BASE/"
chmod 0755 "$BASE/backup-job.sh" "$BASE/storm.py"
chown "$PG_USER:" "$BASE/pgbouncer.ini" "$BASE/userlist.txt"
chmod 0640 "$BASE/userlist.txt"

echo "init-db: cluster in $PGDATA (PostgreSQL $(cat "$PGDATA/PG_VERSION"), shared_buffers $SHARED_BUFFERS)"
echo "init-db: sockets in $BASE/run: postgres port $PG_PORT, pgbouncer port $PGBOUNCER_PORT"
