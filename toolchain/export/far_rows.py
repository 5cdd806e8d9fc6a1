"""INT8 calibration rows that reach past the out-of-class threshold.

INT8 takes each tensor's range from the calibration rows. When none of them
lies beyond the out-of-class threshold, the quantized logit of the distance
tops out below it and the INT8 file's ``unknown`` output can never come first:
a file that never answers "out of class" where Keras does. The scrambled
copies of training photos (``toolchain.quantize.calibration.scrambled``) reach
past it on MobileNetV2 (on a four-flower model their logits reach +8, the
threshold at 0), but not on every model: on the tests' four-layer CNN they
stayed at -6.8 or lower while flat colours lay far past it (logit +40 to +370).
So export measures how far the scrambled copies reach in Keras and, when it is
less than ``REACH``, adds the nearest few rows of the mildest stronger stand-ins
(``calibration.far_candidates``) that reach it; a model nothing reaches is said
so in the log and the card.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from toolchain.confidence.shipped import out_of_class_logit
from toolchain.core.pixel_file import RowFile, batches
from toolchain.core.progress import Log
from toolchain.quantize.calibration import far_candidates, pixel_stats

# The logit some calibration row must reach (an unknown probability of 0.88), so the
# quantized range holds a clear "out of class" answer.
REACH = 2.0
FAR_ROWS = 4  # how many stand-ins past it are added (the nearest ones)


def logits_of(logit_model: Any, rows: Any) -> np.ndarray:
    """The out-of-class logit of each row."""
    out = [
        np.asarray(logit_model.predict_on_batch(b.astype(np.float32))) for b in batches(rows, 64)
    ]
    return np.concatenate(out).ravel() if out else np.zeros(0)


def add_far_rows(
    model: Any, calibration: RowFile, info: Dict[str, Any], seed: int, log: Log
) -> None:
    """Append far rows to ``calibration`` when its scrambled copies do not reach past the
    threshold; records what each kind reached in ``info`` (the card's calibration)."""
    logit_model = out_of_class_logit(model)
    if logit_model is None:
        return
    scrambled = int(info.get("scrambled_images", 0))
    photos = len(calibration) - scrambled
    reached = {
        "scrambled copies": float(
            np.max(logits_of(logit_model, calibration[photos:]), initial=-np.inf)
        )
    }
    info["out_of_class_reach"] = {k: round(v, 2) for k, v in reached.items()}
    if reached["scrambled copies"] >= REACH:
        return
    picks = np.linspace(0, photos - 1, max(scrambled, 8)).round().astype(int)
    for name, rows in far_candidates(calibration[picks], seed):
        logits = logits_of(logit_model, rows)
        past = np.flatnonzero(logits >= REACH)
        reached[name] = float(np.max(logits, initial=-np.inf))
        info["out_of_class_reach"] = {k: round(v, 2) for k, v in reached.items()}
        if not len(past):
            continue
        # The nearest of those past it: the logit's range (and so its INT8 step) grows
        # with the farthest calibration row, and flat colours can lie hundreds out.
        chosen = past[np.argsort(logits[past])[:FAR_ROWS]]
        calibration.append(rows[chosen])
        mean, std = pixel_stats(calibration)
        info.update(images=int(len(calibration)), pixel_mean=round(mean, 2))
        info["pixel_std"] = round(std, 2)
        top = float(logits[chosen].max())
        info["far_images"] = {
            "kind": name,
            "count": int(len(chosen)),
            "largest_logit": round(top, 2),
        }
        log(
            f"int8: the scrambled copies stay inside the out-of-class threshold (logit "
            f"{reached['scrambled copies']:.1f}); calibrating with {len(chosen)} {name} too, "
            f"which reach past it (logit up to {top:.1f})"
        )
        return
    info["far_images"] = None
    log(
        "warning: int8: no calibration image reaches past the out-of-class threshold "
        f"(largest logit {max(reached.values()):.1f}), so the INT8 file's `unknown` output "
        "may never come first; check it with `edgetl validate RUN --unknown-data DIR`"
    )
