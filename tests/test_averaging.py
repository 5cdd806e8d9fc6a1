"""Weight averaging over the last fine-tuning epochs (toolchain.train.averaging).

What a user relies on: the saved weights are the mean of the last epochs' weights,
and a run killed mid-phase and resumed averages the same epochs as one that was not.
"""

from __future__ import annotations

import numpy as np
import pytest

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
    whole, record = _model(keras), _Record(keras)
    start = [np.array(v.numpy()) for v in whole.trainable_variables]
    whole.fit(
        x,
        y,
        epochs=6,
        verbose=0,
        shuffle=False,
        callbacks=[record.callback, averaging_callback(keras, tmp_path / "a", 2, print)],
    )

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 3:  # after epoch 3's sum was saved
                raise KeyboardInterrupt

    first = _model(keras)
    for variable, value in zip(first.trainable_variables, start):
        variable.assign(value)
    with pytest.raises(KeyboardInterrupt):
        first.fit(
            x,
            y,
            epochs=6,
            verbose=0,
            shuffle=False,
            callbacks=[averaging_callback(keras, tmp_path / "b", 2, print), Kill()],
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
    for resumed, uninterrupted in zip(first.trainable_variables, whole.trainable_variables):
        np.testing.assert_allclose(resumed.numpy(), uninterrupted.numpy(), rtol=1e-5)
    # Only the latest two sums are kept on disk.
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        SUM_FILE.format(epoch=4),
        SUM_FILE.format(epoch=5),
    ]
