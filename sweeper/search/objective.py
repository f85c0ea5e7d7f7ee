"""What "best" means: ``eval.objective`` (``dino+clip_t``, ``0.5*dino + clip_i``), parsed once and applied.

The report, the metric-driven search and the MLflow notes all rank by it.
"""

from __future__ import annotations

import math

from lora_core.errors import UserInputError
from lora_core.metrics import METRICS

DEFAULT_OBJECTIVE = (
    "dino+clip_t"  # ``eval.objective`` unless set: DINO subject fidelity plus CLIP prompt fidelity
)


def parse_objective(text: str) -> list[tuple[float, str]]:
    """``"dino+clip_t"`` or ``"0.5*dino + clip_t"`` -> [(weight, metric), ...].

    Raises:
        UserInputError: An unknown metric name.
    """
    terms = []
    for part in text.replace(" ", "").split("+"):
        weight, _, name = part.rpartition("*")
        if name not in METRICS:
            raise UserInputError(f"eval.objective={text!r}: {name!r} is not a metric ({', '.join(METRICS)}).")
        try:
            terms.append((float(weight) if weight else 1.0, name))
        except ValueError as err:
            raise UserInputError(f"eval.objective={text!r}: {weight!r} is not a number.") from err
    return terms


def objective_value(means: dict, terms: list[tuple[float, str]]) -> float | None:
    """Weighted sum of metric means, or None when a metric is missing."""
    if any(name not in means for _, name in terms):
        return None
    return sum(weight * means[name] for weight, name in terms)


def known_objective(value: float | None) -> float | None:
    """A job's objective, None where it has none (no scores: evaluation off or its models missing).

    A job without scores returns None, or NaN where the search needs a number (``objective_or_nan``).
    """
    return None if value is None or math.isnan(value) else float(value)


def objective_or_nan(value: float | None) -> float:
    """A job's objective as a number: NaN where it has none (a search records the trial as failed)."""
    known = known_objective(value)
    return math.nan if known is None else known
