#!/usr/bin/env bash
# Helpers sourced by backup.sh and restore.sh: storage URL resolution and libpq environment.
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
