"""The IMX500 network held to the budget, and what is kept: ``RUN/imx500/`` or the rejected files.

The worker's quantized model answers the test split and the decision images;
both are gated by the test split's rules (``Budget.misses``: the sign test on
the drop, the binomial test on agreement). Each quantization tried is one
``Attempt``; the report lists them all, so a user sees what GPTQ bought.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from edge import atomic
from edge.errors import GateFailed
from toolchain.core.budget import Budget
from toolchain.core.progress import Log
from toolchain.core.rundir import IMX500_EXPORT, IMX500_PREVIOUS, IMX500_REJECTED, RunDir
from toolchain.quantize.imx500.process import WorkerFailed
from toolchain.validate.decision import Judge
from toolchain.validate.figures import compare, p_worse

REPORT = "imx500_report.json"
TEST_KEYS = ("top1", "top1_drop_pts", "worse_than_keras", "agreement", "n_images")
PI_STEPS = (
    "on the Pi: sudo apt install imx500-all imx500-tools; imx500-package -i {zip} -o OUT "
    "(writes OUT/network.rpk, what the camera loads; then `edgetl classify "
    "OUT/network.rpk --source camera` with labels.txt beside it)"
)


@dataclass
class Attempt:
    """One quantization's figures against Keras, and what it missed (empty: it passes)."""

    method: str
    test: Dict[str, Any]
    decision: Dict[str, Any]
    decision_text: str
    problems: List[str]

    @property
    def passed(self) -> bool:
        return not self.problems

    def text(self) -> str:
        return (
            f"imx500: {self.method.upper()}: test split: drop {self.test['top1_drop_pts']:+.2f} "
            f"pts, agreement {self.test['agreement']:.4f} on {self.test['n_images']} images; "
            f"{self.decision_text}"
        )

    def json(self) -> Dict[str, Any]:
        return {
            "method": self.method,
            "test": {k: self.test[k] for k in TEST_KEYS},
            "decision": self.decision,
            "passed": self.passed,
            "misses": self.problems,
        }


def misses_on(figures: Dict[str, Any], budget: Budget, images: str) -> List[str]:
    """``budget``'s misses on one set of ``compare`` figures, each naming the images."""
    return [
        f"{miss} on the {figures['n_images']} {images} images"
        for miss in budget.misses(
            figures["top1_drop_pts"], figures["agreement"], p_worse(figures), figures["n_images"]
        )
    ]


def judge_answers(
    method: str,
    probs: Any,
    judge: Judge,
    budget: Budget,
    names: List[str],
    keras_test: np.ndarray,
    truth: np.ndarray,
) -> Attempt:
    """The worker's answers (``probs["test"]``, ``probs["decision"]``) against the budget."""
    test = compare(keras_test, probs["test"], truth, names)
    decided = compare(judge.keras_probs, probs["decision"], judge.decision.labels, names)
    problems = misses_on(test, budget, "test") + misses_on(decided, budget, "decision")
    estimate = judge.figures(probs["decision"])
    return Attempt(method, test, estimate.json(), estimate.text(), problems)


def report_of(
    attempts: List[Attempt], budget: Budget, names: List[str], out: Path, worker: Dict[str, Any]
) -> Dict[str, Any]:
    """``imx500_report.json``: the kept attempt's figures first, every attempt after."""
    kept = attempts[-1]
    memory_path = out / "model_q_MemoryReport.json"
    memory = json.loads(memory_path.read_text())["Memory Report"] if memory_path.is_file() else None
    return {
        "target": "imx500",
        "files": sorted(p.name for p in out.iterdir()) + ["labels.txt", REPORT],
        "labels": names,
        "out_of_class": "not on the sensor (classes only)",
        "budget": budget.json(),
        "method": kept.method,  # the last attempt: the one shipped when "shipped"
        "shipped": kept.passed,
        "test": {k: kept.test[k] for k in TEST_KEYS},
        "decision": kept.decision,
        "attempts": [attempt.json() for attempt in attempts],
        "memory": memory,
        "worker": worker,
        "package_on_pi": PI_STEPS.format(zip="packerOut.zip"),
    }


def write_beside(out: Path, report: Dict[str, Any], names: List[str]) -> None:
    (out / "labels.txt").write_text("\n".join(names) + "\n")
    atomic.write_json(out / REPORT, report)


def reject(run: RunDir, work: Path, attempts: List[Attempt], report: Dict[str, Any]) -> None:
    """Keep the last attempt's files in ``RUN/rejected-imx500/``; raise with the figures."""
    out = work / "out"
    write_beside(out, report, report["labels"])
    rejected = run.path / IMX500_REJECTED  # its own: a TFLite export owns rejected/
    shutil.rmtree(rejected, ignore_errors=True)
    out.replace(rejected)
    tried = ", ".join(a.method.upper() for a in attempts)
    raise GateFailed(
        f"IMX500 budget missed ({tried} tried): {'; '.join(attempts[-1].problems)} (nothing "
        f"in {run.path / IMX500_EXPORT} changed; the files are in {rejected})"
    )


def recover(run: RunDir) -> None:
    """Finish what a kill between ``commit``'s two renames left (the run lock is held):
    the earlier export is put back when the new one never arrived."""
    target, previous = run.path / IMX500_EXPORT, run.path / IMX500_PREVIOUS
    if previous.exists() and not target.exists():
        previous.replace(target)
    shutil.rmtree(previous, ignore_errors=True)


def commit(
    run: RunDir, work: Path, attempts: List[Attempt], budget: Budget, names: List[str], log: Log
) -> Path:
    """The converted network within budget: ``RUN/imx500/`` (replacing an earlier one)
    when it fits the chip, else rejected like a miss."""
    out = work / "out"
    worker = json.loads((work / "report.json").read_text())
    report = report_of(attempts, budget, names, out, worker)
    if report["memory"] is None:
        raise WorkerFailed(
            f"--target imx500: the converter wrote no memory report in {out}; this is a bug "
            "in edgetl: please report it with the output of `edgetl --debug …`"
        )
    memory = report["memory"]
    log(
        f"imx500: memory {memory.get('Memory Usage')} of "
        f"{memory.get('Total Memory Available On Chip')}, fits in chip: {memory.get('Fit In Chip')}"
    )
    if memory.get("Fit In Chip") is not True:
        attempts[-1].problems.append(
            f"does not fit the chip ({memory.get('Memory Usage')} of 8 MB)"
        )
        report["attempts"][-1], report["shipped"] = attempts[-1].json(), False
        reject(run, work, attempts, report)
    write_beside(out, report, report["labels"])
    target, previous = run.path / IMX500_EXPORT, run.path / IMX500_PREVIOUS
    if target.exists():  # beside the run, not in the work folder: a kill here loses nothing
        target.replace(previous)
    out.replace(target)
    shutil.rmtree(previous, ignore_errors=True)
    shutil.rmtree(run.path / IMX500_REJECTED, ignore_errors=True)  # an earlier miss's files
    log(PI_STEPS.format(zip=target / "packerOut.zip"))
    return target / "packerOut.zip"
