"""The no-regression gate: a fine-tuned model is exported only if it is not worse than its base."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from embed_assets.evaluation.metrics import delta_points


@dataclass
class GateResult:
    """``deltas``: (query set, metric) -> fine-tuned minus base, in points; ``regressions``: those
    below ``-tolerance_points``; ``failed``: the query sets with a regression, in order."""

    deltas: dict[tuple[str, str], float] = field(default_factory=dict)
    regressions: dict[tuple[str, str], float] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failed


def no_regression(
    evaluations: Mapping[str, dict], metrics: Sequence[str], tolerance_points: float = 0.0
) -> GateResult:
    """Hold every evaluation (a :func:`compare_runs` result per query set: the synthetic test split,
    the labelled queries) to every metric in ``metrics``: the fine-tuned model may fall at most
    ``tolerance_points`` below the base on each."""
    # Rounded so that a drop of exactly the tolerance passes despite float error (0.29 - 0.30).
    deltas = {(name, m): round(delta_points(ev, m), 6) for name, ev in evaluations.items() for m in metrics}
    regressions = {key: d for key, d in deltas.items() if d < -tolerance_points}
    return GateResult(deltas, regressions, list(dict.fromkeys(name for name, _ in regressions)))
