"""edgetl train beyond the happy path: resume after a kill, bad files, strategies, reports."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.conftest import assert_one_line_error, edgetl_here, run_cli
from toolchain.train.data import class_weights_for
from toolchain.train.outputs import read_csv_history

SMALL = [
    "--data",
    "synthetic",
    "--image-size",
    "48",
    "--alpha",
    "0.35",
    "--weights",
    "none",
    "--synthetic-per-class",
    "16",
    "--fine-tune-learning-rate",
    "0.003",
    "--patience",
    "0",
]


def test_class_weights_only_when_imbalanced():
    balanced = np.array([0] * 10 + [1] * 12)
    assert class_weights_for(balanced, 2, "auto") is None
    skewed = np.array([0] * 30 + [1] * 10)
    weights = class_weights_for(skewed, 2, "auto")
    assert weights[1] == pytest.approx(3 * weights[0]) and weights[0] == pytest.approx(40 / 60)
    assert class_weights_for(skewed, 2, "off") is None
    assert class_weights_for(balanced, 2, "on") is not None


def test_csv_history_keeps_the_last_row_of_a_repeated_epoch(tmp_path):
    head, fine = tmp_path / "head.csv", tmp_path / "fine.csv"
    head.write_text("epoch,accuracy,loss\n0,0.5,1.0\n1,0.6,0.9\n")
    fine.write_text("epoch,accuracy,loss\n2,0.7,0.8\n3,0.1,9.0\n3,0.8,0.7\n")
    history, head_epochs = read_csv_history([head, fine])
    assert head_epochs == 2 and history["accuracy"] == [0.5, 0.6, 0.7, 0.8]


def test_resume_without_an_interrupted_run_is_a_clear_error(tmp_path):
    assert_one_line_error(run_cli("train", "--out", str(tmp_path), "--resume"), 2, "--resume")


def _bad_folder(root):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                root / name / f"{i}.jpg"
            )
    good = (root / "a" / "0.jpg").read_bytes()
    (root / "a" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "a" / "zero.png").write_bytes(b"")
    (root / "a" / "text.jpg").write_text("this is not an image")
    base = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    base.convert("CMYK").save(root / "b" / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65535, (40, 40))).astype(np.uint16)).save(
        root / "b" / "deep16.png"
    )
    base.convert("L").save(root / "b" / "gray.png")
    base.convert("RGBA").save(root / "b" / "alpha.png")


def test_bad_files_are_decoded_or_skipped_and_listed(tmp_path):
    data = tmp_path / "photos"
    _bad_folder(data)
    run = tmp_path / "run"
    result = edgetl_here(
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        "--image-size",
        "32",
        "--alpha",
        "0.35",
        "--weights",
        "none",
        "--epochs",
        "1",
        "--fine-tune-epochs",
        "0",
        "--val-fraction",
        "0.2",
        "--test-fraction",
        "0.2",
    )
    assert result.returncode == 0, result.stderr
    splits = json.loads((run / "splits.json").read_text())
    skipped = sorted(os.path.basename(path) for path, _ in splits["skipped"])
    assert skipped == ["text.jpg", "truncated.jpg", "zero.png"]
    used = {rel for name in ("train", "val", "test") for rel, _ in splits[name]}
    assert {"b/cmyk.jpg", "b/deep16.png", "b/gray.png", "b/alpha.png"} <= used
    report = json.loads((run / "train_report.json").read_text())
    assert len(report["skipped"]) == 3 and report["counts"]["train"] > 0
    for name in ("text.jpg", "truncated.jpg", "zero.png"):
        assert name in result.stderr


def test_empty_class_and_single_class_folders_exit_2(tmp_path):
    data = tmp_path / "photos"
    (data / "cats").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(data / "cats" / "1.png")
    assert_one_line_error(
        run_cli("train", "--data", str(data), "--out", str(tmp_path / "r")), 2, "at least two"
    )
    (data / "dogs").mkdir()
    assert_one_line_error(
        run_cli("train", "--data", str(data), "--out", str(tmp_path / "r")), 2, "dogs"
    )


@pytest.mark.slow
def test_mirrored_strategy_runs_on_one_cpu_device(tmp_path):
    result = run_cli(
        "train",
        *SMALL,
        "--epochs",
        "1",
        "--fine-tune-epochs",
        "1",
        "--strategy",
        "mirrored",
        "--out",
        str(tmp_path / "run"),
    )
    assert result.returncode == 0, result.stderr
    assert "MirroredStrategy with 1 replica" in result.stderr
    assert (tmp_path / "run" / "model.keras").is_file()


def test_mixed_precision_without_gpu_says_so(tmp_path):
    result = edgetl_here("train", *SMALL, "--mixed-precision", "--out", str(tmp_path / "run"))
    assert_one_line_error(result, 3, "--mixed-precision", "GPU")


def test_saved_model_has_no_augmentation_layers(tiny_run):
    from toolchain.core.quiet import keras

    model = keras().models.load_model(tiny_run / "model.keras", compile=False)
    names = [layer.name for layer in model.layers]
    assert not any("augment" in n or n.startswith("random") for n in names), names


def test_fine_tune_depth_follows_the_base():
    from toolchain.core.options import TrainOptions
    from toolchain.train.checks import resolve_fine_tune_at

    assert resolve_fine_tune_at(TrainOptions(weights="none")) == "0"  # random base: all of it
    assert resolve_fine_tune_at(TrainOptions(weights="imagenet", alpha=1.0)) == "100"
    assert resolve_fine_tune_at(TrainOptions(weights="w.h5", alpha=0.35)) == "block_5"
    assert resolve_fine_tune_at(TrainOptions(alpha=0.35, fine_tune_at="block_13")) == "block_13"


def test_training_over_a_run_needs_force(micro_copy):
    before = (micro_copy / "model.keras").read_bytes()
    refused = edgetl_here("train", *SMALL, "--epochs", "1", "--out", str(micro_copy))
    assert_one_line_error(refused, 2, "already holds a run", "--force")
    assert (micro_copy / "model.keras").read_bytes() == before  # nothing was touched
    assert list(micro_copy.glob("model_int8*.tflite"))
    (micro_copy / "rejected").mkdir()  # what a failed export leaves (transaction)
    (micro_copy / "rejected" / "model_int8.tflite.rejected").write_bytes(b"old evidence")
    (micro_copy / "imx500").mkdir()  # an AI Camera export of the old model
    (micro_copy / "imx500" / "packerOut.zip").write_bytes(b"old network")

    replaced = edgetl_here(
        "train",
        *SMALL,
        "--epochs",
        "1",
        "--fine-tune-epochs",
        "0",
        "--out",
        str(micro_copy),
        "--force",
    )
    assert replaced.returncode == 0, replaced.stderr
    assert (micro_copy / "model.keras").read_bytes() != before
    # the old export no longer matches the new model, so it is gone with it
    assert not list(micro_copy.glob("model_*.tflite")) and not (micro_copy / "parity.json").exists()
    assert not (micro_copy / "rejected").exists() and not (micro_copy / "imx500").exists()


@pytest.mark.slow
def test_same_seed_same_model(tmp_path):
    """Fine-tuning with augmentation is reproducible: the same --seed gives the same run."""
    histories = []
    for name in ("a", "b"):
        run = tmp_path / name
        args = [*SMALL, "--epochs", "1", "--fine-tune-epochs", "2", "--out", str(run)]
        assert run_cli("train", *args).returncode == 0
        histories.append(json.loads((run / "history.json").read_text()))
    assert histories[0]["loss"] == histories[1]["loss"]
    assert histories[0]["val_accuracy"] == histories[1]["val_accuracy"]


@pytest.mark.parametrize(
    "count, workers, batch", [(2051, 2, 32), (257, 2, 32), (40, 3, 39), (5, 4, 8)]
)
def test_even_shards_give_every_worker_the_same_full_steps_and_keep_every_image(
    count, workers, batch
):
    from toolchain.train.data import even_shards

    rows = np.arange(count, dtype=np.float32)[:, None]
    labels = np.arange(count) % 3
    padded, padded_labels, weights = even_shards(rows, labels, 3, batch, None)
    assert len(padded) % batch == 0 and len(padded) - count < batch
    per_replica = batch // workers
    # What tf.data's shard(workers, i) then batch(per_replica) gives each worker.
    steps = [-(-len(range(i, len(padded), workers)) // per_replica) for i in range(workers)]
    assert len(set(steps)) == 1 and all(
        len(range(i, len(padded), workers)) % per_replica == 0 for i in range(workers)
    )
    assert weights.tolist() == [1.0, 1.0, 1.0, 0.0]  # the pad class weighs nothing
    assert (padded_labels[count:] == 3).all() and (padded_labels[:count] == labels).all()
    assert padded[np.arange(len(padded))][:count, 0].tolist() == list(range(count))


def test_non_finite_weights_or_outputs_are_refused_naming_the_phase_option():
    from edge.errors import BadInput
    from toolchain.train.checks import require_finite

    require_finite([np.ones(3)], "head", 1e-3, "the weights")
    with pytest.raises(BadInput, match="--learning-rate"):
        require_finite([np.ones(3), np.array([np.nan])], "head", 1e6, "the weights")
    with pytest.raises(BadInput, match="--fine-tune-learning-rate"):
        require_finite([np.array([np.inf])], "fine_tune", 10.0, "the model's outputs")


@pytest.mark.slow
def test_a_diverging_run_stops_in_one_line_and_saves_no_model(tmp_path):
    """A learning rate far too large drives the loss to NaN or infinity. The CLI caps the
    rates at 10, so the library is called (as a script would) with one past any sense."""
    from edge.errors import BadInput
    from toolchain.core.options import TrainOptions
    from toolchain.train.command import train

    run = tmp_path / "run"
    options = TrainOptions(
        out=str(run), data="synthetic", synthetic_per_class=6, image_size=32, alpha=0.35,
        weights="none", epochs=0, fine_tune_epochs=2, fine_tune_learning_rate=1e30, patience=0,
    )  # fmt: skip
    with pytest.raises(BadInput, match="diverged.*lower --fine-tune-learning-rate") as error:
        train(options, log=lambda message: None)
    assert "\n" not in str(error.value)
    assert not list(run.rglob("*.keras")) and not list(run.rglob("best_*.weights.h5"))
