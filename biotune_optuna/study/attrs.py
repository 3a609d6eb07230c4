"""Names of every study and trial attribute biotune-optuna writes, and the typed slot record.

Stored names never change (an interrupted study resumes from the database alone): this module
only gives them one home. System attributes are bookkeeping; user attributes are also shown to
people in optuna-dashboard.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# ---------------------------------------------------------------- study attributes
#: Study user attribute: the whole :class:`biotune_optuna.config.StudyConfig` as a dict.
CONFIG = "biotune_config"
#: Study user attribute of a comparison study: the Optuna sampler it ran (``tpe``, ``random``…).
SAMPLER = "sampler"
#: Study user attribute prefix of a stored final-protocol result, one attribute per method:
#: ``final:biotune``, ``final:baseline:<key>``, ``final:sampler:<key>`` → the table row, the
#: basis it was computed for and a version (``report.stored``). ``report`` shows these instead
#: of retraining.
FINAL_RESULT_PREFIX = "final:"
#: Study user attribute: the round of the final protocol's work units (``report --recompute``
#: starts a new round; units of older rounds are not read). Absent: round 0.
FINAL_ROUND = "final_round"
#: Study system attribute: generations already published as dashboard pages.
DASHBOARD_GENERATIONS = "biotune:dashboard_generations"

# ---------------------------------------------------------------- trial system attributes
#: Trial user attributes of a final-protocol work unit (``report.units``): the unit (method,
#: parameters, seed, round) and, once done, its result.
FINAL_UNIT = "final_unit"
FINAL_UNIT_RESULT = "final_result"
#: The slot record (:class:`SlotRecord`) of a trial: ONE attribute, written by the sampler.
SLOT = "biotune:slot"
#: Set on a FAIL trial whose evaluation raised (told by its worker), as opposed to one that was
#: interrupted (user attribute :data:`INTERRUPTED`) or reaped after its worker died.
FAILED = "biotune:failed"

# ---------------------------------------------------------------- trial user attributes
#: A readable copy of the claim (generation, slot, role, fold) for people.
SLOT_COPY = "slot"
#: The value (in the study's direction) a PRUNED trial stands for in the search.
PRUNED_VALUE = "pruned_value"
#: Where a pruned trial stopped: ``{"seed": i, "epoch": e}``.
PRUNED_AT = "pruned_at"
#: The trial's worker was stopped (SIGTERM/SIGINT): not the genome's fault.
INTERRUPTED = "interrupted"
#: ``host:pid`` of the worker that evaluated the trial.
WORKER = "worker"
#: The data fold the trial was evaluated on (spec §5.1).
FOLD = "fold"
#: Decoded plan: names of the fine-tuned blocks, and their learning rates.
TRAINABLE_BLOCKS = "trainable_blocks"
LR_BY_BLOCK = "lr_by_block"
#: Fraction of parameters fine-tuned, in [0, 1].
TRAINABLE_FRACTION = "trainable_fraction"
#: Best validation macro accuracy of each seed, and the epoch it was reached.
SEED_ACCURACIES = "seed_accuracies"
BEST_EPOCHS = "best_epochs"
#: True when the frozen prefix ran once, from the feature cache.
CACHED_PREFIX = "cached_prefix"
#: Why a genome trained nothing (every gene ≤ threshold).
SKIPPED = "skipped"
#: The exception of a failed evaluation, first 500 characters.
ERROR = "error"
#: On a trial that found the search already finished (slot record ``finished``): why it is
#: PRUNED without params. ``run`` and workers stop before asking, so only a worker that lost a
#: race for the last slot makes one; shown in optuna-dashboard so that nobody takes it for a result.
NOT_AN_EVALUATION = "not_an_evaluation"


@dataclass(frozen=True)
class SlotRecord:
    """A trial's place in the search, as stored in the system attribute :data:`SLOT`.

    Attributes:
        state: ``"claimed"`` (holds a slot), ``"waiting"`` (no slot free yet; ``at`` is when it
            last said so, Unix seconds) or ``"finished"`` (the search had ended: no slot).
        generation, slot: the slot held (claimed only).
        role: ``init``, ``hill+``, ``hill-``, ``child`` or ``random``.
        parents: (generation, slot) origins of the members the proposal came from.
        genome: the B + 1 genes to evaluate.
        fold: the data fold of the slot's generation.
        at: Unix time of a waiting record.
        seed: in a study whose work unit is one seed (``StudyConfig.work_unit == "seed"``), the
            index into ``StudyConfig.seeds`` of the one seed this trial fine-tunes; None when
            the trial evaluates its slot with every seed (``work_unit == "trial"``, and every
            record written before work units existed).
    """

    state: str
    generation: int | None = None
    slot: int | None = None
    role: str | None = None
    parents: tuple[tuple[int, int], ...] = ()
    genome: tuple[float, ...] = ()
    fold: int | None = None
    at: float | None = None
    seed: int | None = None

    @property
    def claimed(self) -> bool:
        """True when the record holds a slot."""
        return self.state == "claimed"

    @property
    def key(self) -> tuple[int, int]:
        """(generation, slot) of a claimed record."""
        return (int(self.generation), int(self.slot))  # type: ignore[arg-type]

    @property
    def unit_key(self) -> tuple[int, int, int]:
        """(generation, slot, seed index) of a claimed record; seed index 0 for a whole-slot
        record (its slot is one unit)."""
        return (*self.key, int(self.seed or 0))

    @classmethod
    def from_attr(cls, value: Mapping | None) -> SlotRecord | None:
        """The record of a stored attribute value (None when there is none)."""
        if not value:
            return None
        return cls(
            state=value["state"],
            generation=value.get("generation"),
            slot=value.get("slot"),
            role=value.get("role"),
            parents=tuple(tuple(p) for p in value.get("parents", ())),
            genome=tuple(value.get("genome", ())),
            fold=value.get("fold"),
            at=value.get("at"),
            seed=value.get("seed"),
        )

    def to_attr(self) -> dict:
        """The JSON value stored in :data:`SLOT` (only the fields its state uses)."""
        if self.state == "finished":
            return {"state": "finished"}
        if self.state == "waiting":
            return {"state": "waiting", "at": self.at}
        record = {
            "state": "claimed",
            "generation": self.generation,
            "slot": self.slot,
            "role": self.role,
            "parents": [list(p) for p in self.parents],
            "genome": list(self.genome),
            "fold": self.fold,
        }
        if self.seed is not None:
            record["seed"] = self.seed
        return record

    def readable(self) -> dict:
        """The copy stored in the user attribute :data:`SLOT_COPY` for people."""
        copy = {"generation": self.generation, "slot": self.slot, "role": self.role, "fold": self.fold}
        if self.seed is not None:
            copy["seed"] = self.seed
        return copy

    def describe(self) -> str:
        """``gen G slot S (role) · fold F`` (and ``· seed I`` for a one-seed unit) for log lines."""
        unit = "" if self.seed is None else f" · seed {self.seed}"
        return f"gen {self.generation} slot {self.slot} ({self.role}) · fold {self.fold}{unit}"
