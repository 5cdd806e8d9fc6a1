"""The accuracy budget: one value, built once from the flags and passed down whole.

Why a default budget: a user who runs ``edgetl export RUN`` and copies the file to
a device has not asked how much accuracy INT8 cost. On real photos the plain
full-INT8 export lost 2–3 points and flipped one decision in ten while exiting 0.
So the export judges every model against a budget (``DEFAULT_MAX_DROP`` points of
top-1, ``DEFAULT_MIN_AGREEMENT`` top-1 agreement with Keras) unless told another.
The defaults are declared in ``edge/gate.py`` (the device applies them without
the toolchain). ``edgetl validate`` gates only the bounds it is given: its
``Budget.given`` may leave a bound unset (``None``: not checked).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

from edge.errors import BadInput
from edge.gate import (
    DEFAULT_MAX_DROP,
    DEFAULT_MIN_AGREEMENT,
    agreement_misses,
    agreement_phrase,
    drop_misses,
    drop_phrase,
)


@dataclass(frozen=True)
class Budget:
    max_drop: Optional[float]  # top-1 points a model may lose against Keras
    min_agreement: Optional[float]  # top-1 agreement with Keras a model must keep
    defaulted: bool = False  # neither bound was given: the documented default applies

    @classmethod
    def of(cls, max_drop: Optional[float], min_agreement: Optional[float]) -> Budget:
        """The export's budget, always whole: an unset bound takes the default (an
        explicit ``--max-drop 2`` alone still keeps the default agreement bound)."""
        check_bounds(max_drop, min_agreement)
        return cls(
            DEFAULT_MAX_DROP if max_drop is None else float(max_drop),
            DEFAULT_MIN_AGREEMENT if min_agreement is None else float(min_agreement),
            max_drop is None and min_agreement is None,
        )

    @classmethod
    def given(cls, max_drop: Optional[float], min_agreement: Optional[float]) -> Budget:
        """``edgetl validate``'s gate: exactly the bounds given, the others unchecked."""
        check_bounds(max_drop, min_agreement)
        return cls(
            None if max_drop is None else float(max_drop),
            None if min_agreement is None else float(min_agreement),
        )

    @property
    def whole(self) -> bool:
        return self.max_drop is not None and self.min_agreement is not None

    def misses(
        self, drop: float, agreement: float, p_worse: float, n_images: Optional[int] = None
    ) -> List[str]:
        """One phrase per bound the figures miss (an unset bound misses nothing). Each
        bound is judged to what the ``n_images`` behind the figures resolve: the drop as
        ``edge.gate.drop_misses`` says (past it and worse than Keras beyond chance,
        ``p_worse``), the agreement as ``edge.gate.agreement_misses`` says."""
        found = []
        if self.max_drop is not None and drop_misses(drop, p_worse, self.max_drop):
            found.append(drop_phrase(drop, p_worse, f"--max-drop {self.max_drop:g}"))
        if self.min_agreement is not None and agreement_misses(
            agreement, n_images, self.min_agreement
        ):
            found.append(
                agreement_phrase(agreement, n_images, self.min_agreement, "--min-agreement")
            )
        return found

    def flags(self) -> str:
        return f"--max-drop {self.max_drop:g} --min-agreement {self.min_agreement:g}"

    def json(self) -> Dict[str, Any]:
        return {**asdict(self), "source": "default" if self.defaulted else "options"}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_bounds(max_drop: Optional[float], min_agreement: Optional[float]) -> None:
    """The bounds' ranges: a NaN or negative budget would pass or fail every model
    whatever its figures, and agreement is a fraction."""
    if max_drop is not None and not (
        _is_number(max_drop) and math.isfinite(max_drop) and max_drop >= 0
    ):
        raise BadInput(
            f"--max-drop {max_drop}: give the top-1 percentage points a model may lose, "
            "a finite number >= 0 (e.g. --max-drop 1)"
        )
    if min_agreement is not None and not (_is_number(min_agreement) and 0 <= min_agreement <= 1):
        raise BadInput(
            f"--min-agreement {min_agreement}: give a fraction from 0 to 1 "
            "(e.g. --min-agreement 0.95)"
        )
