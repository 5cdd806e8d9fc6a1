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

from edge.metrics import agreement_below_evidence

DEFAULT_MAX_DROP = 1.0  # top-1 points a shipped model may lose against Keras
DEFAULT_MIN_AGREEMENT = 0.95  # top-1 agreement with Keras a shipped model must keep
BOUNDS = {"max_drop": DEFAULT_MAX_DROP, "min_agreement": DEFAULT_MIN_AGREEMENT}
# A drop past the bound fails only when the images show the model is worse than Keras
# at this level (``edge.metrics.worse_evidence``): below it, the split cannot tell.
SIGNIFICANCE = 0.05


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


def drop_misses(drop: float, p_worse: float, max_drop: float) -> bool:
    """The drop bound, judged to what the images can resolve: past ``max_drop`` *and*
    worse than Keras beyond chance (``p_worse < SIGNIFICANCE``). Why: a one-point bound
    on ~170 test images is one image, and a point rule failed a model exactly as
    accurate as Keras about one export in three; a rule that ignores the bound would
    pass a real loss that a large split shows plainly. The point drop is reported as
    measured either way."""
    return drop > max_drop and p_worse < SIGNIFICANCE


def agreement_misses(agreement: float, n_images: Optional[int], min_agreement: float) -> bool:
    """The agreement bound, judged like the drop: below ``min_agreement`` *and* below it
    beyond chance (``edge.metrics.agreement_below_evidence`` < ``SIGNIFICANCE``). Why: a
    point rule on 257 test images refused a model that agreed 0.97 on the 1,200 images
    the export decided on and 0.9455 (14 images differing where 12.85 are allowed) on the
    test split. Figures that do not say how many images they cover (an older report) are
    judged by the point rule, so they are never judged more leniently than they were."""
    if agreement >= min_agreement:
        return False
    if not n_images:
        return True
    return agreement_below_evidence(agreement, int(n_images), min_agreement) < SIGNIFICANCE


def agreement_phrase(agreement: float, n_images: Optional[int], bound: float, name: str) -> str:
    """``name``: how the user sets the bound (a flag, or the gate's own words)."""
    phrase = f"agreement {agreement:.4f} < {name} {bound:g}"
    if not n_images:
        return phrase
    p = agreement_below_evidence(agreement, int(n_images), bound)
    return f"{phrase} (below it beyond chance: p = {p:.3g})"


def drop_phrase(drop: float, p_worse: float, bound: str) -> str:
    return (
        f"top-1 drop {drop:.2f} pts > {bound} (worse than Keras beyond chance: p = {p_worse:.3g})"
    )


def drop_text(drop: float, evidence: Mapping[str, Any]) -> str:
    """The drop with the images behind it, for one line of a summary."""
    return (
        f"drop {drop:+.2f} pts: {evidence['lost']} images lost, {evidence['gained']} gained, "
        f"p = {evidence['p_worse']:.3g}"
    )


def failures(
    drop: float,
    agreement: float,
    gate: Mapping[str, Any],
    p_worse: float,
    n_images: Optional[int] = None,
) -> List[str]:
    """One phrase per bound the figures miss (``n_images``: the images behind them)."""
    found = []
    if drop_misses(drop, p_worse, gate["max_drop"]):
        found.append(drop_phrase(drop, p_worse, f"max drop {gate['max_drop']:g}"))
    if agreement_misses(agreement, n_images, gate["min_agreement"]):
        found.append(agreement_phrase(agreement, n_images, gate["min_agreement"], "min agreement"))
    return found
