"""INT8 calibration rows that reach past the out-of-class threshold.

INT8 takes each tensor's range from the calibration rows. When none of them
lies beyond the out-of-class threshold, the quantized logit of the distance
tops out below it and the INT8 file's ``unknown`` output can never come first:
a file that never answers "out of class" where Keras does. The scrambled
copies of training photos (``toolchain.quantize.calibration.scrambled``) reach
past it on MobileNetV2 (on three four-flower models their logits reach +8 to
+30, the threshold at 0), but not on every model: on the tests' four-layer CNN
they stayed at -6.8 or lower while flat colours lay far past it (logit +40 to
+370). So export (and ``validate --diagnose``, which calibrates as export does)
measures how far the scrambled copies reach in Keras and, when it is less than
``REACH``, adds the nearest few rows of the mildest stronger stand-ins
(``calibration.far_candidates``) that reach it; a model nothing reaches is said
so in the log and the card.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from toolchain.confidence.shipped import out_of_class_logit
from toolchain.core.pixel_file import Rows, batches
from toolchain.quantize.calibration import far_candidates, scrambled_copies

# The logit some calibration row must reach (an unknown probability of 0.88, the
# threshold being 0), so the quantized range holds a clear "out of class" answer.
REACH = 2.0
FAR_ROWS = 4  # how many stand-ins past it are added (the nearest ones)


def logits_of(logit_model: Any, rows: Rows) -> np.ndarray:
    """The out-of-class logit of each row."""
    out = [
        np.asarray(logit_model.predict_on_batch(b.astype(np.float32))) for b in batches(rows, 64)
    ]
    return np.concatenate(out).ravel() if out else np.zeros(0)


def find_far_rows(
    model: Any, calibration: Rows, scrambled: int, seed: int
) -> Tuple[Optional[np.ndarray], Dict[str, Any]]:
    """``(rows to add, what the card records)`` for calibration rows whose last
    ``scrambled`` are the scrambled copies: no rows when those reach ``REACH`` (or the
    model has no out-of-class output: nothing recorded either)."""
    logit_model = out_of_class_logit(model)
    if logit_model is None:
        return None, {}
    photos = len(calibration) - scrambled
    reached = {"scrambled copies": _largest(logits_of(logit_model, calibration[photos:]))}
    if reached["scrambled copies"] >= REACH:
        return None, _record(reached)
    picks = np.linspace(0, photos - 1, max(scrambled, 8)).round().astype(int)
    for name, rows in far_candidates(calibration[picks], seed):
        logits = logits_of(logit_model, rows)
        reached[name] = _largest(logits)
        past = np.flatnonzero(logits >= REACH)
        if len(past):
            # The nearest of those past it: the logit's range (and so its INT8 step)
            # grows with the farthest calibration row, and flat colours can lie far out.
            chosen = past[np.argsort(logits[past])[:FAR_ROWS]]
            far = {
                "kind": name,
                "count": int(len(chosen)),
                "largest_logit": _largest(logits[chosen]),
            }
            return rows[chosen], _record(reached, far)
    return None, _record(reached, None)


def calibrated_as_export_does(model: Any, photos: np.ndarray, seed: int) -> np.ndarray:
    """``photos`` (decoded training images) with the rows an INT8 export of ``model``
    calibrates with besides them: its scrambled copies, then any far rows. For the tools
    that must see what export's quantizer saw (``validate --diagnose``); export itself
    streams its rows from a file (``quantize.calibration.calibration_set``) and adds
    the same two in the same order."""
    if out_of_class_logit(model) is None:
        return photos
    copies = scrambled_copies(photos, seed)
    rows = np.concatenate([photos, copies])
    far, _ = find_far_rows(model, rows, len(copies), seed)
    return rows if far is None else np.concatenate([rows, far])


def describe(found: Dict[str, Any]) -> Optional[str]:
    """The log line for what ``find_far_rows`` found; None when nothing was needed."""
    far = found.get("far_images", False)
    if far is False:
        return None
    values = [v for v in found["out_of_class_reach"].values() if v is not None]
    copies = found["out_of_class_reach"].get("scrambled copies")
    if far is None:
        largest = f"the largest {max(values):.1f}" if values else "none finite"
        return (
            f"warning: int8: no calibration image reaches an out-of-class logit of {REACH:g} "
            f"(the threshold is at 0; {largest}), so the INT8 file's `unknown` output may "
            "come first less often than Keras's; check it with `edgetl validate RUN "
            "--unknown-data DIR`"
        )
    copies_reached = (
        "no scrambled copy has a finite out-of-class logit"
        if copies is None
        else f"the scrambled copies reach an out-of-class logit of {copies:.1f}"
    )
    return (
        f"int8: {copies_reached}, short of {REACH:g} (the threshold is at 0); calibrating "
        f"with {far['count']} {far['kind']} too, which reach past it (logit up to "
        f"{far['largest_logit']:.1f})"
    )


def _largest(logits: np.ndarray) -> float:
    return round(float(np.max(logits, initial=-np.inf)), 2)


def _record(reached: Dict[str, float], far: Any = False) -> Dict[str, Any]:
    """What each kind reached, and (once needed) what was added: None when nothing."""
    finite = {k: (v if np.isfinite(v) else None) for k, v in reached.items()}  # no rows: None
    return {"out_of_class_reach": finite, **({} if far is False else {"far_images": far})}
