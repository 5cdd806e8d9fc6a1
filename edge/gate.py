"""The accuracy budget's defaults, and the gate ``edgetl parity`` applies on the device.

The defaults live here, in ``edge``, because the device command must apply them
without TensorFlow or the toolchain installed: a parity reference that carries no
budget (written by an older edgetl, or edited) falls back to them, never to "no
gate". ``toolchain.options`` gives the export the same numbers.

Precedence on the device, bound by bound: a flag given to ``edgetl parity`` (the
user on the device decides, tighter or looser), else the reference's budget (what
the export held or ``validate`` was told), else the default.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

DEFAULT_MAX_DROP = 1.0  # top-1 points a shipped model may lose against Keras
DEFAULT_MIN_AGREEMENT = 0.95  # top-1 agreement with Keras a shipped model must keep
BOUNDS = {"max_drop": DEFAULT_MAX_DROP, "min_agreement": DEFAULT_MIN_AGREEMENT}


def device_gate(
    reference_budget: Mapping[str, Optional[float]],
    max_drop: Optional[float],
    min_agreement: Optional[float],
) -> Dict[str, Any]:
    """Both bounds, always set, and where each came from (``flag``, ``reference``,
    ``default``)."""
    flags = {"max_drop": max_drop, "min_agreement": min_agreement}
    gate: Dict[str, Any] = {}
    sources: Dict[str, str] = {}
    for key, default in BOUNDS.items():
        for source, value in (
            ("flag", flags[key]),
            ("reference", reference_budget.get(key)),
            ("default", default),
        ):
            if value is not None:
                gate[key], sources[key] = float(value), source
                break
    return {**gate, "sources": sources}


def failures(drop: float, agreement: float, gate: Mapping[str, Any]) -> List[str]:
    """One phrase per bound the figures miss."""
    found = []
    if drop > gate["max_drop"]:
        found.append(f"top-1 drop {drop:.2f} pts > max drop {gate['max_drop']:g}")
    if agreement < gate["min_agreement"]:
        found.append(f"agreement {agreement:.4f} < min agreement {gate['min_agreement']:g}")
    return found
