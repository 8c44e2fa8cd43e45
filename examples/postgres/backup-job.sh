#!/bin/sh
# The misbehaving sidecar of examples/postgres: a "backup/exporter" job that is memory-hungry on
# demand. Every BACKUP_INTERVAL seconds it runs one job:
#
#   * normally a tiny one (a schema-only pg_dump to /dev/null when PGHOST is set, else nothing);
#   * while the trigger file STORM_TRIGGER exists, a memory storm instead: stress-ng allocates
#     STORM_BYTES in all, split evenly over STORM_WORKERS processes (stress-ng divides --vm-bytes
#     among its vm workers), at once (--vm-populate), and holds it (--vm-hang 0) for up to
#     STORM_SECONDS: the kind of job that reads a whole dump into memory, or a parallel
#     compressor with one big buffer per worker. It is a memory storm, not a CPU storm: after the
#     allocation the workers sleep.
#
# Under oomguard the storm fills the shared [slice.sidecars] budget. The kernel throttles it at
# the slice's memory.high; oomguard evicts the job (SIGTERM, then cgroup.kill after stop_timeout),
# or if it outruns oomguard the kernel OOM-kills it inside the slice. Either way oomguard starts
# it again (after hysteresis, or after its restart backoff) and the next job storms again.
# Create the trigger file to start storming (`touch /var/lib/oomguard-example/storm`), remove it
# to stop.
#
# --oomable: stress-ng must not respawn a worker that the OOM killer took (its default), so an
# OOM kill ends the storm the way it ends a real job. --temp-path: stress-ng refuses to start in
# a working directory it cannot write (the job runs as "postgres" wherever oomguard was started).
#
# STORM_TOOL=python runs storm.py (next to this script) instead: the same storm, but its
# processes keep the oom_score_adj they inherit, whereas stress-ng's vm workers set theirs to
# 1000 (the kernel's first choice) on their own. Under oomguard that changes nothing (the job is
# alone with pgbouncer in its budget and already at 900); in a plain container it decides who the
# OOM killer takes, so tools/bench_postgres.py uses python for both of its layouts.
set -u

BACKUP_INTERVAL=${BACKUP_INTERVAL:-5}
STORM_TRIGGER=${STORM_TRIGGER:-/var/lib/oomguard-example/storm}
STORM_WORKERS=${STORM_WORKERS:-1}
STORM_BYTES=${STORM_BYTES:-320M}
STORM_SECONDS=${STORM_SECONDS:-60}
STORM_TOOL=${STORM_TOOL:-stress-ng}
HERE=$(dirname "$0")
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}

child=
# A stop signal ends the job and the storm with it (stress-ng stops its workers on SIGTERM).
trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null; wait; exit 0' TERM INT

n=0
echo "backup-job: pid $$, a job every ${BACKUP_INTERVAL}s; storms while $STORM_TRIGGER exists"
while :; do
    sleep "$BACKUP_INTERVAL" &
    child=$!
    wait "$child"
    n=$((n + 1))
    if [ -e "$STORM_TRIGGER" ]; then
        echo "backup-job: job $n: storm: $STORM_BYTES in $STORM_WORKERS process(es) for up to ${STORM_SECONDS}s" \
            "(at $(date -u +%H:%M:%S.%N | cut -c1-12))"
        if [ "$STORM_TOOL" = python ]; then
            STORM_BYTES=$STORM_BYTES STORM_WORKERS=$STORM_WORKERS STORM_SECONDS=$STORM_SECONDS \
                python3 "$HERE/storm.py" &
        else
            stress-ng --vm "$STORM_WORKERS" --vm-bytes "$STORM_BYTES" --vm-populate --vm-keep \
                --vm-hang 0 --oomable --timeout "${STORM_SECONDS}s" --temp-path "${TMPDIR:-/tmp}" &
        fi
        child=$!
        wait "$child"
        echo "backup-job: job $n: storm ended (status $?)"
    elif [ -n "${PGHOST:-}" ] && [ -x "$PG_BIN/pg_dump" ]; then
        "$PG_BIN/pg_dump" --schema-only --dbname="${BACKUP_DB:-bench}" >/dev/null &
        child=$!
        wait "$child" || echo "backup-job: job $n: pg_dump failed (status $?)"
    fi
    child=
done
