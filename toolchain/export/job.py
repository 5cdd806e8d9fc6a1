"""One ``edgetl export`` call as one value: what it reads, where it writes, what it is
held to. Passed whole to the steps below ``export`` (repair, shipping), so the budget
and the options are never unpacked into loose arguments and repacked further down."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

from toolchain.core.budget import Budget
from toolchain.core.options import ExportOptions
from toolchain.core.progress import Log
from toolchain.core.rundir import RunDir


@dataclass(frozen=True)
class ExportJob:
    run: RunDir  # the trained run: config, splits, model.keras (only read)
    out: RunDir  # the staging folder every new file is written into (transaction)
    options: ExportOptions
    budget: Budget
    config: Dict[str, Any]
    model: Any  # the Keras model
    calibration: Optional[np.ndarray]  # INT8 calibration pixels (None without int8)
    log: Log
    # The answer floor every card of this export carries (export/answer_floor.py); None
    # for a model without the out-of-class output.
    answer: Optional[Dict[str, Any]] = None
