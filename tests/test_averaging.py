"""Weight averaging over the last fine-tuning epochs (toolchain.train.averaging).

What a user relies on: the saved weights are the mean of the last epochs' weights,
and a run killed mid-phase and resumed averages the same epochs as one that was not.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import BadInput
from toolchain.core.quiet import keras as import_keras
from toolchain.train.averaging import SUM_FILE, averaging_callback, window


def _model(keras):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


class _Record:
    """Each epoch's weights, as the averaging callback sees them."""

    def __init__(self, keras):
        self.seen = []
        record = self

        class Record(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                record.seen.append([np.array(v.numpy()) for v in self.model.trainable_variables])

        self.callback = Record()


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(32, 3)).astype("float32"), rng.normal(size=(32, 2)).astype("float32")


def _uninterrupted(keras, folder, epochs):
    """``(model, its initial weights)`` after ``epochs`` epochs in one go, the average
    taken from epoch 2 on: what every interrupted run is compared with."""
    model = _model(keras)
    start = [np.array(v.numpy()) for v in model.trainable_variables]
    callbacks = [averaging_callback(keras, folder, 2, print)]
    model.fit(*_data(), epochs=epochs, verbose=0, shuffle=False, callbacks=callbacks)
    return model, start


def _model_from(keras, start):
    """A new process's model, from the same initial weights."""
    model = _model(keras)
    for variable, value in zip(model.trainable_variables, start):
        variable.assign(value)
    return model


def _kill_after_epoch_3(keras):
    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 3:
                raise KeyboardInterrupt

    return Kill()


def _assert_same_weights(model, other):
    for a, b in zip(model.trainable_variables, other.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5)


def test_the_window_is_at_most_the_last_half_of_the_phase():
    assert window(10, 25) == 10
    assert window(10, 10) == 5  # a short phase: not the epochs before it settled
    assert window(10, 1) == 0
    assert window(0, 25) == 0


def test_the_saved_weights_are_the_mean_of_the_last_epochs(tmp_path):
    keras = import_keras()
    model, record, lines = _model(keras), _Record(keras), []
    x, y = _data()
    average = averaging_callback(keras, tmp_path, first=3, log=lines.append)
    model.fit(x, y, epochs=6, verbose=0, callbacks=[record.callback, average])
    expected = [np.mean([epoch[i] for epoch in record.seen[3:]], axis=0) for i in range(2)]
    for variable, mean in zip(model.trainable_variables, expected):
        np.testing.assert_allclose(variable.numpy(), mean, rtol=1e-6)
    assert not np.allclose(model.trainable_variables[0].numpy(), record.seen[-1][0])
    assert lines == ["fine-tune: weights averaged over the last 3 epochs"]


def test_a_resumed_phase_averages_the_same_epochs(tmp_path):
    """Epochs 0-3 in one process, killed, then 4-5 in another (as BackupAndRestore
    resumes), against 0-5 at once: the same average."""
    keras = import_keras()
    x, y = _data()
    whole, start = _uninterrupted(keras, tmp_path / "a", epochs=6)
    first = _model_from(keras, start)
    averaging = averaging_callback(keras, tmp_path / "b", 2, print)
    with pytest.raises(KeyboardInterrupt):  # after epoch 3's sum was saved
        first.fit(
            x,
            y,
            epochs=6,
            verbose=0,
            shuffle=False,
            callbacks=[averaging, _kill_after_epoch_3(keras)],
        )
    assert (tmp_path / "b" / SUM_FILE.format(epoch=3)).is_file()
    # The new process starts at epoch 4 (plain SGD keeps no state to lose).
    first.fit(
        x,
        y,
        epochs=6,
        initial_epoch=4,
        verbose=0,
        shuffle=False,
        callbacks=[averaging_callback(keras, tmp_path / "b", 2, print)],
    )
    _assert_same_weights(first, whole)
    # Only the latest two sums are kept on disk.
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        SUM_FILE.format(epoch=4),
        SUM_FILE.format(epoch=5),
    ]


def test_a_resume_after_the_last_epoch_still_averages(tmp_path):
    """Killed after the last epoch's sum and backup, before the phase ended: the resumed
    fit runs no epoch, and the weights are still the average."""
    keras = import_keras()
    x, y = _data()
    whole, start = _uninterrupted(keras, tmp_path / "a", epochs=4)
    resumed = _model_from(keras, start)
    averaging = averaging_callback(keras, tmp_path / "b", 2, print)
    with pytest.raises(KeyboardInterrupt):
        resumed.fit(
            x,
            y,
            epochs=4,
            verbose=0,
            shuffle=False,
            callbacks=[averaging, _kill_after_epoch_3(keras)],
        )
    resumed.fit(
        x,
        y,
        epochs=4,
        initial_epoch=4,
        verbose=0,
        callbacks=[averaging_callback(keras, tmp_path / "b", 2, print)],
    )
    _assert_same_weights(resumed, whole)


def test_a_damaged_or_missing_sum_is_one_clear_error(tmp_path):
    """A resume that cannot take up the average says so and how to go on; it does not
    start the average over silently, nor crash."""
    keras = import_keras()
    x, y = _data()
    model = _model(keras)
    model.fit(x, y, epochs=1, verbose=0)
    folder = tmp_path / "sums"
    folder.mkdir()
    (folder / SUM_FILE.format(epoch=2)).write_bytes(b"PK\x03\x04 not a zip")
    for done, problem in ((2, "is damaged"), (4, "is missing")):
        callback = averaging_callback(keras, folder, 1, print)
        callback.set_model(model)
        with pytest.raises(BadInput, match=f"{problem}.*start over with --force"):
            callback.on_epoch_begin(done + 1)
    # A sum of another model (other shapes) is refused too.
    other = [np.zeros((5, 5)), np.zeros(5)]
    np.savez(folder / SUM_FILE.format(epoch=1), *other, count=np.int64(1))
    callback = averaging_callback(keras, folder, 1, print)
    callback.set_model(model)
    with pytest.raises(BadInput, match="does not belong to this run's model"):
        callback.on_epoch_begin(2)


@pytest.mark.parametrize("kill_before_backup", [False, True])
def test_a_kill_and_resume_through_keras_backups_averages_the_same_epochs(
    tmp_path, kill_before_backup
):
    """The order the phase uses (the sum, then BackupAndRestore's backup), killed after
    epoch 3's backup or between the two saves; a new process resumes from the backup."""
    keras = import_keras()
    whole, start = _uninterrupted(keras, tmp_path / "a", epochs=6)

    def phase(model, kill):
        backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
        order = [averaging_callback(keras, tmp_path / "b", 2, print), backup]
        if kill:
            order.insert(1 if kill_before_backup else 2, _kill_after_epoch_3(keras))
        model.fit(*_data(), epochs=6, verbose=0, shuffle=False, callbacks=order)

    with pytest.raises(KeyboardInterrupt):
        phase(_model_from(keras, start), kill=True)
    resumed = _model(keras)  # a new process: weights and epoch come from the backup
    phase(resumed, kill=False)
    _assert_same_weights(resumed, whole)
