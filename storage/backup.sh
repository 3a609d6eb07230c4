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

# ---- shared by backup.sh and restore.sh (keep the two copies identical) ---------------------
die() { echo "${0##*/}: $*" >&2; exit 2; }
redact() { sed -E 's#^([a-zA-Z0-9+.-]+://[^:/@?]*):.*@#\1:***@#' <<<"$1"; }
urldecode() { local s=${1//\\/\\\\}; printf '%b' "${s//%/\\x}"; }
# resolve_url URL_ARG FILE_ARG -> prints the URL (precedence as in biotune-optuna)
resolve_url() {
  local url=$1 file=$2
  if [[ -z $url && -n $file ]]; then
    [[ -r $file ]] || die "cannot read the storage URL file $file"
    IFS= read -r url <"$file" || true
  fi
  [[ -n $url ]] || url=${BIOTUNE_STORAGE:-}
  if [[ -z $url && -n ${BIOTUNE_STORAGE_FILE:-} ]]; then
    [[ -r $BIOTUNE_STORAGE_FILE ]] || die "cannot read \$BIOTUNE_STORAGE_FILE ($BIOTUNE_STORAGE_FILE)"
    IFS= read -r url <"$BIOTUNE_STORAGE_FILE" || true
  fi
  url=${url%$'\r'}
  [[ -n $url ]] || die "no storage URL: give --storage-file FILE, or set \$BIOTUNE_STORAGE_FILE or \$BIOTUNE_STORAGE"
  printf '%s' "$url"
}
# use_url URL HOST PORT: export PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE(/PGSSLMODE) for libpq
use_url() {
  local url=$1 rest userinfo="" hostport query="" kv host port
  case $url in
    postgresql://* | postgres://* | postgresql+*://*) ;;
    *) die "not a PostgreSQL URL: $(redact "$url")" ;;
  esac
  rest=${url#*://}
  if [[ $rest == *\?* ]]; then query=${rest#*\?}; rest=${rest%%\?*}; fi
  if [[ $rest == *@* ]]; then userinfo=${rest%@*}; rest=${rest##*@}; fi
  hostport=${rest%%/*}
  PGDATABASE=$(urldecode "${rest#"$hostport"}"); PGDATABASE=${PGDATABASE#/}
  if [[ $hostport == \[* ]]; then             # [IPv6]:port
    host=${hostport%%]*}; host=${host#[}; port=${hostport#*]}; port=${port#:}
  else
    host=${hostport%%:*}; port=""; [[ $hostport == *:* ]] && port=${hostport#*:}
  fi
  [[ -n $host ]] && export PGHOST=$host
  [[ -n $port ]] && export PGPORT=$port
  if [[ -n $userinfo ]]; then
    export PGUSER; PGUSER=$(urldecode "${userinfo%%:*}")
    if [[ $userinfo == *:* ]]; then export PGPASSWORD; PGPASSWORD=$(urldecode "${userinfo#*:}"); fi
  fi
  local IFS='&'
  for kv in $query; do
    case ${kv%%=*} in
      sslmode) export PGSSLMODE; PGSSLMODE=$(urldecode "${kv#*=}") ;;
      host) export PGHOST; PGHOST=$(urldecode "${kv#*=}") ;;
      port) export PGPORT; PGPORT=$(urldecode "${kv#*=}") ;;
      connect_timeout) export PGCONNECT_TIMEOUT; PGCONNECT_TIMEOUT=$(urldecode "${kv#*=}") ;;
    esac
  done
  [[ -n ${2:-} ]] && export PGHOST=$2
  [[ -n ${3:-} ]] && export PGPORT=$3
  [[ -n ${PGDATABASE:-} ]] || die "the storage URL names no database: $(redact "$url")"
  export PGDATABASE PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-10}
}
where() { echo "${PGUSER:-${USER:-?}}@${PGHOST:-local socket}:${PGPORT:-5432}/$PGDATABASE"; }
# ---------------------------------------------------------------------------------------------

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
