"""Final-protocol results kept in the study, so a report is computed once.

Each method's row is one study user attribute ``final:<method>``
(:data:`~biotune_optuna.study.attrs.FINAL_RESULT_PREFIX`) holding the row, the *basis* it was
computed for (BioTune's genome, a sampler's genome and evaluations, a baseline's sweep) and
:data:`VERSION`. A row is reused only when the basis and version match what is asked now; a
report that was interrupted resumes with the methods it had finished. Torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import optuna

from biotune_optuna.study import attrs

#: Version of the stored layout and protocol: rows of another version are recomputed.
VERSION = 1


def _normal(value: object) -> object:
    """``value`` as it reads back from storage (tuples → lists, floats exact)."""
    return json.loads(json.dumps(value))


def load(study: optuna.Study, key: str, basis: Mapping) -> dict | None:
    """The stored row of method ``key`` if it was computed for ``basis``, else None."""
    stored = study.user_attrs.get(attrs.FINAL_RESULT_PREFIX + key)
    if not isinstance(stored, dict) or stored.get("version") != VERSION or stored.get("basis") != _normal(basis):
        return None
    return stored.get("row")


def has_other(study: optuna.Study, key: str) -> bool:
    """True when a row of method ``key`` is stored for another basis or version."""
    return attrs.FINAL_RESULT_PREFIX + key in study.user_attrs


def save(study: optuna.Study, key: str, basis: Mapping, row: Mapping) -> None:
    """Store the row of method ``key`` computed for ``basis`` (replacing any older one)."""
    study.set_user_attr(attrs.FINAL_RESULT_PREFIX + key, {"version": VERSION, "basis": _normal(basis), "row": _normal(row)})


def stored_keys(study: optuna.Study) -> list[str]:
    """Methods with a stored row, e.g. ``["biotune", "baseline:full"]``."""
    return [k.removeprefix(attrs.FINAL_RESULT_PREFIX) for k in study.user_attrs if k.startswith(attrs.FINAL_RESULT_PREFIX)]
