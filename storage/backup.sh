#!/usr/bin/env bash
# Back up the study database: pg_dump, custom format (compressed; restore with storage/restore.sh).
#
#   BIOTUNE_STORAGE_FILE=~/.config/biotune/storage_url storage/backup.sh -o backups/biotune.dump
#   storage/backup.sh --storage-file secrets/storage_url --host 127.0.0.1     # compose host
#
# Options:
#   -o, --output FILE     dump file (default ./biotune-DB-YYYYmmddTHHMMSSZ.dump); written
#                         atomically, mode 0600, checked with pg_restore --list
#   --storage-file FILE   read the storage URL from the first line of FILE
#   --url URL             the URL itself (avoid: argv is visible to every user in `ps`)
#   --host H, --port P    override the URL's host/port (e.g. 127.0.0.1 when the URL names the
#                         compose service `postgres`)
# The URL is taken, in order, from --url, --storage-file, $BIOTUNE_STORAGE, the first line of
# $BIOTUNE_STORAGE_FILE - as `biotune-optuna` does. SQLAlchemy URLs (postgresql+psycopg2://) are
# accepted. The password reaches pg_dump through the environment only and is never printed.
# Safe while workers run: pg_dump reads one consistent snapshot. pg_dump must be at least the
# server's major version (postgresql-client-15 for postgres:15).
set -euo pipefail

# storage URL resolution and libpq environment, shared with restore.sh / backup.sh
# shellcheck source=storage/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

out="" url_arg="" file_arg="" host="" port=""
while [[ $# -gt 0 ]]; do
  case $1 in
    -o | --output) out=${2:?}; shift 2 ;;
    --storage-file) file_arg=${2:?}; shift 2 ;;
    --url) url_arg=${2:?}; shift 2 ;;
    --host) host=${2:?}; shift 2 ;;
    --port) port=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
command -v pg_dump >/dev/null || die "pg_dump not found (apt-get install postgresql-client-15)"

url=$(resolve_url "$url_arg" "$file_arg")
use_url "$url" "$host" "$port"
[[ -n $out ]] || out="./biotune-${PGDATABASE}-$(date -u +%Y%m%dT%H%M%SZ).dump"
[[ -e $out ]] && die "$out exists: not overwriting it"

umask 077
tmp="$out.partial.$$"
trap 'rm -f "$tmp"' EXIT
echo "backup: $(where) -> $out"
pg_dump --no-password --format=custom --file="$tmp"
entries=$(pg_restore --list "$tmp" | grep -c ' TABLE DATA ' || true)
mv "$tmp" "$out"
trap - EXIT
echo "backup: done, $(du -h "$out" | cut -f1), $entries tables with data"
