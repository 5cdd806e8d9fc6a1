"""Read back the JSON edgetl wrote, strictly: one reader for every file a step trusts.

Every step reads what an earlier one wrote (splits, the training state, the export
report, parity reports, the device reference, the card inside a model). Those
files travel between machines and get edited, so what comes back is checked here
before any code indexes into it:

- **size**: at most ``MAX_BYTES`` (64 MiB). The largest file edgetl writes is the
  device reference, about 100 bytes per image plus 10 per class per image: a
  100,000-image test split of 20 classes is ~30 MiB. A bigger file is not one of
  ours, and reading it whole would cost the device its memory before any check.
- **depth**: at most ``MAX_DEPTH`` levels (edgetl's files nest 5 deep). Python's
  decoder recurses per level, so ``[[[[…]]]]`` 100,000 deep would otherwise surface
  as a RecursionError (an "internal error", exit 4) instead of a bad file.
- **numbers**: ``NaN``, ``Infinity`` and numbers too large for a float (``1e999``)
  are refused: Python accepts them, but no gate means anything after a NaN
  (every comparison with it is false), and edgetl never writes them
  (``edge.atomic.write_json`` is strict).

``parse`` raises ``NotStrictJSON`` (a ValueError) with a short reason;
``read_json`` turns every failure into one ``BadInput`` line naming the file and
the fix. Per-file checks (types, ranges) are the callers'; ``number`` and
``whole_number`` help them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional

from edge.errors import BadInput

MAX_BYTES = 64 << 20
MAX_DEPTH = 64


class NotStrictJSON(ValueError):
    """Text that is not JSON edgetl could have written; the message is the reason."""


def _refuse_constant(name: str) -> Any:
    raise NotStrictJSON(f"it holds {name}, which edgetl never writes")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotStrictJSON(f"the number {text[:20]} is too large for a float")
    return value


def depth_of(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            stack.extend(
                (child, level + 1) for child in children if isinstance(child, (dict, list))
            )
    return deepest


def parse(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Strict JSON from ``text``; ``NotStrictJSON`` with a one-line reason otherwise."""
    if len(text) > MAX_BYTES:
        raise NotStrictJSON(f"it is over {MAX_BYTES >> 20} MiB")
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except NotStrictJSON:
        raise
    except RecursionError:
        raise NotStrictJSON(f"it is nested too deeply (over {max_depth} levels)") from None
    except json.JSONDecodeError as error:
        raise NotStrictJSON(f"not valid JSON ({error.msg} at line {error.lineno})") from None
    except UnicodeDecodeError:
        raise NotStrictJSON("not UTF-8 text") from None
    except ValueError as error:  # an integer of thousands of digits, a stray byte order mark
        reason = " ".join(str(error).split())[:80]
        raise NotStrictJSON(f"not valid JSON ({reason})") from None
    if depth_of(value) > max_depth:
        raise NotStrictJSON(f"it is nested too deeply (over {max_depth} levels)")
    return value


def read_json(path: str | os.PathLike, fix: str, max_bytes: int = MAX_BYTES) -> Any:
    """The strict JSON in file ``path``; one ``BadInput`` line ending in ``fix`` otherwise."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise BadInput(f"{path}: missing; {fix}") from None
    except IsADirectoryError:
        raise BadInput(f"{path}: is a folder, not a JSON file; {fix}") from None
    except OSError as error:
        raise BadInput(
            f"{path}: cannot be read ({error.strerror or type(error).__name__}); {fix}"
        ) from None
    if len(data) > max_bytes:
        raise BadInput(f"{path}: over {max_bytes >> 20} MiB, so not a file edgetl wrote; {fix}")
    try:
        return parse(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not UTF-8 text, so not a file edgetl wrote; {fix}") from None
    except NotStrictJSON as error:
        raise BadInput(f"{path}: {error}; {fix}") from None


def is_number(value: Any) -> bool:
    """A JSON number (bool is an int in Python, never a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(
    value: Any, low: float = -math.inf, high: float = math.inf, optional: bool = False
) -> Optional[float]:
    """``value`` as a float in ``[low, high]``; ``NotStrictJSON`` naming it otherwise."""
    if value is None and optional:
        return None
    if not is_number(value) or not math.isfinite(value) or not low <= value <= high:
        shown = " ".join(repr(value).split())[:40]
        raise NotStrictJSON(f"{shown} is not a number from {low:g} to {high:g}")
    return float(value)


def whole_number(value: Any, low: int = 0, high: Optional[int] = None) -> int:
    """``value`` as an int in ``[low, high]``; ``NotStrictJSON`` naming it otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise NotStrictJSON(f"{' '.join(repr(value).split())[:40]} is not a whole number >= {low}")
    if high is not None and value > high:
        raise NotStrictJSON(f"{value} is past {high}")
    return value
