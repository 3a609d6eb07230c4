#!/usr/bin/env bash
# Restore a dump made by storage/backup.sh into the study database (pg_restore).
#
#   storage/restore.sh --storage-file ~/.config/biotune/storage_url backups/biotune.dump
#   storage/restore.sh --storage-file secrets/storage_url --host 127.0.0.1 --force backups/x.dump
#
# Stop every worker (and the dashboard) first. Refuses, without --force, to restore into a
# database that already holds tables or has other sessions connected; with --force the dump's
# objects are dropped and recreated (pg_restore --clean --if-exists). The restore runs in ONE
# transaction: on any error the database is left as it was. Objects end up owned by the URL's
# user (--no-owner --no-privileges), so a dump can move between servers and role names.
# After a restore, trials that were RUNNING when the dump was taken have stale heartbeats: the
# first worker fails them and their slots are evaluated again. Just start the workers.
#
# Options:
#   --force               restore over a non-empty database / with other sessions connected
#   --storage-file FILE   read the storage URL from the first line of FILE
#   --url URL             the URL itself (avoid: argv is visible to every user in `ps`)
#   --host H, --port P    override the URL's host/port
# URL precedence and password handling as in backup.sh; the password is never printed.
set -euo pipefail

# storage URL resolution and libpq environment, shared with restore.sh / backup.sh
# shellcheck source=storage/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

force=0 url_arg="" file_arg="" host="" port="" dump=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --force) force=1; shift ;;
    --storage-file) file_arg=${2:?}; shift 2 ;;
    --url) url_arg=${2:?}; shift 2 ;;
    --host) host=${2:?}; shift 2 ;;
    --port) port=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option: $1 (see --help)" ;;
    *) [[ -z $dump ]] || die "one dump file only"; dump=$1; shift ;;
  esac
done
[[ -n $dump ]] || die "usage: ${0##*/} [--force] [--storage-file FILE] [--host H] [--port P] DUMP"
command -v pg_restore >/dev/null || die "pg_restore not found (apt-get install postgresql-client-15)"
[[ -r $dump ]] || die "cannot read $dump"
pg_restore --list "$dump" >/dev/null 2>&1 || die "$dump is not a pg_dump custom-format archive"

url=$(resolve_url "$url_arg" "$file_arg")
use_url "$url" "$host" "$port"
q() { psql --no-password --no-psqlrc -v ON_ERROR_STOP=1 -Atqc "$1"; }

relations=$(q "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r','p','v','m','S','f')
    AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%'
    AND n.nspname NOT LIKE 'pg_temp%'") || die "cannot connect to $(where)"
others=$(q "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")

clean=()
if [[ $relations -gt 0 ]]; then
  [[ $force -eq 1 ]] || die "database $(where) is not empty ($relations tables/sequences/views): refusing to restore over it. Stop the workers, then rerun with --force to replace the dump's objects"
  echo "restore: --force: dropping and recreating the dump's objects in a non-empty database" >&2
  clean=(--clean --if-exists)
fi
if [[ $others -gt 0 ]]; then
  [[ $force -eq 1 ]] || die "$others other session(s) are connected to $(where): stop the workers and the dashboard first (or --force)"
  echo "restore: --force: $others other session(s) connected; they may block or see a half-restored study until this finishes" >&2
fi

echo "restore: $dump -> $(where)"
pg_restore --no-password --no-owner --no-privileges --single-transaction --exit-on-error \
  "${clean[@]}" --dbname="$PGDATABASE" "$dump"
q "SET client_min_messages TO error; ANALYZE" >/dev/null  # planner statistics (non-superusers skip catalogs quietly)
tables=$(q "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog','information_schema')")
summary="$tables tables"
if [[ $(q "SELECT to_regclass('trials') IS NOT NULL AND to_regclass('studies') IS NOT NULL") == t ]]; then
  summary+=", $(q "SELECT count(*) FROM studies") studies, $(q "SELECT count(*) FROM trials") trials"
fi
echo "restore: done, $summary"
