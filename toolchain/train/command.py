"""``edgetl train``: two-phase MobileNetV2 transfer learning into a run directory.

One command, top to bottom: check the options, check the ``--out`` folder (or
pick up an interrupted run), read and decode the data, train the head and then
fine-tune (``toolchain.train.phases``), evaluate and write the run's files into a
staging folder (``toolchain.train.outputs``), and commit them into place at
once (``toolchain.train.runstate``). A kill at any point leaves the previous run's
files as they were, and ``--resume`` redoes at most the interrupted epoch.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

from edge import atomic
from edge.answer import UNKNOWN_ANSWER
from edge.errors import BadInput
from toolchain.core.options import TrainOptions
from toolchain.core.progress import Log, stderr_log
from toolchain.core.rundir import RunDir
from toolchain.train import runstate
from toolchain.train.checks import checked_options, require_finite
from toolchain.train.confidence_fit import fit_confidence
from toolchain.train.data import (
    TrainingData,
    class_weights_for,
    load_training_data,
    read_image_folder,
)
from toolchain.train.datasets import data_folder
from toolchain.train.devices import WorkerRole, worker_role
from toolchain.train.outputs import evaluate, write_outputs
from toolchain.train.phases import (
    build_model,
    fine_tune_phase,
    head_phase,
    plain_copy,
    require_gpu,
    start_session,
)


@dataclass
class TrainResult:
    run_dir: Path
    labels: List[str]
    counts: Dict[str, int]
    val_top1: float
    test_top1: float
    seconds: Dict[str, float]
    already_finished: bool = False  # --resume on a finished run: nothing was trained
    worker_note: str = ""  # a multi-worker run's other workers: where the chief wrote it

    def summary(self) -> str:
        """The one line ``edgetl train`` prints when it is done."""
        if self.worker_note:
            return self.worker_note
        done = "already trained, nothing to do" if self.already_finished else "trained"
        return (
            f"{done}: {self.run_dir}  val top-1 {self.val_top1:.4f}  "
            f"test top-1 {self.test_top1:.4f}"
        )


def train(options: TrainOptions, log: Log = stderr_log) -> TrainResult:
    """Train a run into ``options.out``; every refusal is a ``BadInput`` (exit 2)
    raised before the folder is touched."""
    options = checked_options(options)
    role = worker_role(options.strategy)
    if role is not None and not role.chief:
        # Only the chief writes --out; another worker keeps its checkpoints (for
        # --resume) in a hidden folder beside it and removes it when training ends.
        # --resume and --force apply to it as to --out, so a worker left from a killed
        # run is refused, like the chief, rather than started afresh out of step.
        hidden = Path(options.out).parent / f".{Path(options.out).name}.worker-{role.index}"
        options = replace(options, out=str(hidden))
        log(f"worker {role.index} of {role.workers}: its working files go to {hidden}")
    run = RunDir(options.out)
    alone = False  # a multi-worker chief completing a run whose training had ended
    if role is not None and not role.chief and options.resume and not run.path.exists():
        raise BadInput(
            f"--resume: worker {role.index} has no working folder {run.path}: it finished its "
            "part of the training (a worker removes its folder then) or never started here; "
            "if the workers had finished, the chief's --resume alone completes the run"
        )
    plan = runstate.check_out_folder(run, data_folder(options.data), options.resume, options.force)
    if plan == "finished":
        run.require_trained()
        log(f"--resume: {run.path} finished training already; nothing to do")
        return _result(run, already_finished=True)
    if plan == "resume":
        options = runstate.resumed_options(run)
        log(f"resuming {run.path} with the options it was started with")
        if run.committing():
            return _commit(run, log)  # killed while committing: finish the renames
        if role is not None and runstate.trained_together(run, options):
            if not role.chief:  # its part is done; the chief writes the run alone
                shutil.rmtree(run.path)
                note = f"worker {role.index}: its training had finished before the kill"
                return TrainResult(
                    run.path, [], {}, float("nan"), float("nan"), {}, worker_note=note
                )
            # Every collective step is behind us: the chief fits the calibration and
            # writes the files on its own, without waiting for a cluster that may be gone.
            log("--resume: the workers had finished training; the chief completes the run alone")
            role, alone = None, True
    elif options.mixed_precision:
        require_gpu()
    # A user's folder or a tfds set is read (and its class names checked) before
    # anything is written; generated data is written into the run, so after the claim.
    folder = (
        None
        if options.data == "synthetic" or options.resume
        else read_image_folder(options, run.path)
    )
    if options.out_of_class and folder is not None and UNKNOWN_ANSWER in folder.labels:
        raise BadInput(
            f"--data {options.data}: a class folder is named {UNKNOWN_ANSWER!r}, the answer edgetl "
            "gives photos of none of the classes; rename that folder, or train with "
            "--no-out-of-class"
        )
    runstate.claim(run, options)
    data = load_training_data(options, run, folder, log)
    try:
        worker_result = _train_and_write(options, run, data, role, log, alone)
    finally:
        data.close()  # the decoded rows' unlinked files go with it
    if worker_result is not None:
        shutil.rmtree(run.path)
        return worker_result
    return _commit(run, log)


def _train_and_write(
    options: TrainOptions,
    run: RunDir,
    data: TrainingData,
    role: Optional[WorkerRole],
    log: Log,
    alone: bool = False,
) -> Optional[TrainResult]:
    """Both phases, then the run's files into staging; for a worker that is not the chief,
    its result instead (it writes no run)."""
    # A chief completing alone joins no cluster; the run still records the strategy
    # it was trained with.
    session = start_session(replace(options, strategy="auto") if alone else options, data, run, log)
    model, base = build_model(session)
    class_weight = class_weights_for(
        data.splits["train"].class_indices, len(data.labels), options.class_weights
    )
    if class_weight:
        log(
            "class weights: "
            + ", ".join(f"{data.labels[i]} {w:.2f}" for i, w in class_weight.items())
        )

    after_head = run.checkpoints / "after_head.weights.h5"
    if runstate.read_state(run).get("head_done") and after_head.is_file():
        model.load_weights(after_head)
        log("head phase already done: loaded its weights")
    elif options.epochs:
        head_phase(session, model, class_weight)
        model.save_weights(after_head)
    runstate.write_state(run, head_done=True)
    across_workers = role is not None
    if options.fine_tune_epochs and not _fine_tuned_already(run, model, across_workers, log):
        fine_tune_phase(session, model, base, class_weight)
        if role is None or role.chief:  # a worker other than the chief needs no weights
            with atomic.atomic_path(run.checkpoints / runstate.AFTER_FINE_TUNE) as writing:
                model.save_weights(writing)  # whole and synced, then the flag
        runstate.write_state(run, fine_tune_done=True)

    keras_model = plain_copy(session, model)
    session.keras.mixed_precision.set_global_policy("float32")  # what later steps expect
    last_phase = "fine_tune" if options.fine_tune_epochs else "head"
    learning_rate = (
        options.fine_tune_learning_rate if options.fine_tune_epochs else options.learning_rate
    )
    require_finite(keras_model.get_weights(), last_phase, learning_rate, "the trained weights")
    if role is not None and not role.chief:
        note = f"worker {role.index}: trained in step with the chief, which writes the run"
        nan = float("nan")
        return TrainResult(run.path, data.labels, data.counts, nan, nan, {}, worker_note=note)
    keras_model, confidence = fit_confidence(keras_model, data, options.out_of_class, log)
    evaluation = evaluate(keras_model, data)
    require_finite(evaluation.probabilities, last_phase, learning_rate, "the model's outputs")
    log(f"keras top-1: val {evaluation.top1['val']:.3f}, test {evaluation.top1['test']:.3f}")
    write_outputs(
        runstate.staged(run),
        runstate.working_logs(run),
        keras_model,
        options,
        data,
        evaluation,
        session.timings,
        log,
        confidence,
    )
    return None


def _fine_tuned_already(run: RunDir, model: Any, across_workers: bool, log: Log) -> bool:
    """Load the fine-tuned weights a killed run kept, when it got that far.

    Keras deletes a phase's per-epoch backups when the phase ends, so without them a
    kill while the calibration is fitted or the files are written would fine-tune
    again from the head. Not for tasks training together (``across_workers``): they
    must all train the phase or none, so a task killed within the phase redoes it with
    the others; a chief whose cluster had finished completes alone (see ``train``).
    """
    kept = run.checkpoints / runstate.AFTER_FINE_TUNE
    if across_workers or not runstate.read_state(run).get("fine_tune_done"):
        return False
    before = model.get_weights()  # Keras loads what it can of a damaged file
    try:
        model.load_weights(kept)
    except Exception as error:  # any damage: fine-tuning again is always safe
        model.set_weights(before)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        log(f"could not read the fine-tuned weights {kept} ({reason}); fine-tuning again")
        return False
    log("fine-tune phase already done: loaded its weights")
    return True


def _commit(run: RunDir, log: Log) -> TrainResult:
    runstate.commit(run, log)
    log(f"wrote {run.model}, training_curves.png, train_report.json in {run.path}")
    return _result(run)


def _result(run: RunDir, already_finished: bool = False) -> TrainResult:
    """The result as config.json records it, so a finished run reads the same later."""
    config = run.read_config()
    results = config.get("results") if isinstance(config.get("results"), dict) else {}
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    return TrainResult(
        run.path,
        list(config["labels"]),
        data.get("counts") if isinstance(data.get("counts"), dict) else {},
        _number(results.get("val_top1")),
        _number(results.get("test_top1")),
        config.get("seconds") if isinstance(config.get("seconds"), dict) else {},
        already_finished,
    )


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else float("nan")
