"""The house keeps its rules: pure rooms import no framework, and the old sampler path still works."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _imported_after(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("biotune_optuna.config", {"torch", "optuna", "sqlalchemy", "numpy"}),
        ("biotune_optuna.search", {"torch", "optuna", "sqlalchemy"}),
        ("biotune_optuna.study.sampler", {"torch", "torchvision", "timm"}),
        ("biotune_optuna.study.studies", {"torch", "torchvision", "timm"}),
        ("biotune_optuna.cli.status", {"torch", "torchvision", "timm"}),
        ("biotune_optuna.cli.dashboard", {"torch", "torchvision", "timm"}),
        ("biotune_optuna.finetune.training", {"optuna", "sqlalchemy"}),
        ("biotune_optuna.finetune.baselines", {"optuna", "sqlalchemy"}),
    ],
)
def test_each_room_imports_only_what_its_floor_allows(module, forbidden):
    assert not (_imported_after(module) & forbidden)


def test_old_sampler_path_still_works_with_a_deprecation_warning():
    code = (
        "import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
        "try:\n    import biotune_optuna.sampler\nexcept DeprecationWarning as w:\n    print('warned:', w)\n"
        "warnings.simplefilter('ignore')\n"
        "from biotune_optuna.sampler import BioTuneSampler\n"
        "from biotune_optuna.study.sampler import BioTuneSampler as New\n"
        "print(BioTuneSampler is New)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "warned: biotune_optuna.sampler moved" in out and out.strip().endswith("True")
