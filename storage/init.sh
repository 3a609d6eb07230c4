#!/usr/bin/env bash
# Create the BioTune role and database in a PostgreSQL server (idempotent).
#
# In Docker: mounted into the official postgres image as
#   /docker-entrypoint-initdb.d/10-biotune.sh
# it runs ONCE, when the data volume is first initialised (see docker-compose.yml). Changing
# BIOTUNE_DB_PASSWORD later does nothing to an existing volume: use ALTER ROLE (storage/README.md).
#
# On any other server (as a superuser; connection from the usual PG* variables):
#   PGHOST=db.example.org POSTGRES_USER=postgres BIOTUNE_DB_PASSWORD='...' bash storage/init.sh
#
# Environment:
#   BIOTUNE_DB_PASSWORD   password of the biotune role (required)
#   BIOTUNE_DB_USER       role name      (default biotune)
#   BIOTUNE_DB_NAME       database name  (default biotune)
#   POSTGRES_USER, POSTGRES_DB   superuser and maintenance database to connect as/to
#                                (default postgres/postgres; set by the postgres image)
#
# What it does: a LOGIN role without superuser rights that owns the study database (so it can
# create Optuna's tables in schema public); CONNECT on that database only for that role;
# UTC for every session (Optuna 5.0 stores naive UTC timestamps); a timeout that ends sessions
# left idle inside a transaction, so a hung worker cannot hold the study row lock for ever.
# The password goes to psql through the environment (\getenv), never through argv or a log.
#
# No `set -u` and no `exit`: the postgres image *sources* this file when it is not executable.
set -eo pipefail

: "${BIOTUNE_DB_PASSWORD:?BIOTUNE_DB_PASSWORD is not set (see .env.example)}"
export BIOTUNE_DB_USER="${BIOTUNE_DB_USER:-biotune}"
export BIOTUNE_DB_NAME="${BIOTUNE_DB_NAME:-biotune}"
export BIOTUNE_DB_PASSWORD

psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password -q \
  --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" <<'SQL'
\getenv u BIOTUNE_DB_USER
\getenv db BIOTUNE_DB_NAME
\getenv pw BIOTUNE_DB_PASSWORD
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE', :'u')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'u') \gexec
ALTER ROLE :"u" WITH LOGIN PASSWORD :'pw';
SELECT format('CREATE DATABASE %I OWNER %I ENCODING %L TEMPLATE template0', :'db', :'u', 'UTF8')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
REVOKE CONNECT, TEMPORARY ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO :"u";
ALTER DATABASE :"db" SET timezone TO 'UTC';
ALTER ROLE :"u" IN DATABASE :"db" SET idle_in_transaction_session_timeout TO '10min';
SQL
echo "biotune init: role '${BIOTUNE_DB_USER}' owns database '${BIOTUNE_DB_NAME}'"
