#!/bin/sh
# The backup sidecar of examples/docker (installed as /usr/local/bin/pg-backup-loop): every
# BACKUP_INTERVAL seconds, `pg_dumpall` over the local socket into BACKUP_DIR, keeping the newest
# BACKUP_KEEP dumps. oomguard runs it as the postgres user in the sidecars slice.
#
# It is the sidecar to lose first (criticality 10): when memory runs short, oomguard evicts it
# (SIGTERM, then cgroup.kill after stop_timeout) or the kernel OOM-kills it inside its slice;
# either way oomguard starts it again later. A dump cut short leaves only a .partial file, which
# the next run removes; the finished dumps are never touched by a failed one.
set -u

BACKUP_DIR=${BACKUP_DIR:-/backup}
BACKUP_INTERVAL=${BACKUP_INTERVAL:-3600}
BACKUP_KEEP=${BACKUP_KEEP:-3}
PGHOST=${PGHOST:-/var/run/postgresql}
export PGHOST

child=
# A stop signal ends the running dump too: the job must not outlive its service.
trap 'if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null; wait "$child"; fi; exit 0' TERM INT

echo "pg-backup-loop: pid $$, a dump every ${BACKUP_INTERVAL}s into $BACKUP_DIR, keeping $BACKUP_KEEP"
while :; do
    # First wait, then dump: right after a (re)start PostgreSQL may still be recovering.
    sleep "$BACKUP_INTERVAL" &
    child=$!
    wait "$child"
    rm -f "$BACKUP_DIR"/*.partial
    name="all-$(date -u +%Y%m%dT%H%M%SZ).sql"
    pg_dumpall --file="$BACKUP_DIR/$name.partial" &
    child=$!
    if wait "$child"; then
        mv "$BACKUP_DIR/$name.partial" "$BACKUP_DIR/$name"
        echo "pg-backup-loop: wrote $BACKUP_DIR/$name"
        # Newest first; everything after the first BACKUP_KEEP goes.
        ls -1t "$BACKUP_DIR"/all-*.sql | tail -n "+$((BACKUP_KEEP + 1))" | while read -r old; do
            rm -f -- "$old"
        done
    else
        echo "pg-backup-loop: pg_dumpall failed (status $?); retrying in ${BACKUP_INTERVAL}s" >&2
    fi
    child=
done
