"""How an exception becomes one line and an exit code (toolchain/core/failures.py)."""

from __future__ import annotations

from edge.errors import ENVIRONMENT, INTERNAL
from toolchain.core.failures import REASON_CHARS, describe_failure


def test_a_lost_worker_is_the_environment_and_says_how_to_resume(monkeypatch):
    from toolchain.core.quiet import tensorflow

    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:1"]}}')

    tf = tensorflow()
    error = tf.errors.UnavailableError(None, None, "failed to connect to all addresses\nipv4:...")
    code, message = describe_failure(error)
    assert code == ENVIRONMENT
    assert "another worker" in message and "--resume" in message and "\n" not in message
    monkeypatch.delenv("TF_CONFIG")  # one process alone: no worker to lose, so a bug
    assert describe_failure(error)[0] == INTERNAL


def test_an_internal_error_holding_a_whole_tensor_stays_a_short_line():
    code, message = describe_failure(ValueError("PerReplica:{ 0: " + "[1.0, 2.0] " * 10_000))
    assert code == INTERNAL and "this is a bug in edgetl" in message
    assert len(message) < REASON_CHARS + 200 and "\n" not in message


def test_out_of_memory_is_the_environment_with_a_hint_not_a_bug(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    # TensorFlow's own class, matched by name and module (failures.py never imports TF).
    exhausted = type("ResourceExhaustedError", (Exception,), {})
    exhausted.__module__ = "tensorflow.python.framework.errors_impl"
    for error in (
        MemoryError(),
        exhausted("OOM when allocating tensor with shape[4096,96,96,32]\n"),
    ):
        code, message = describe_failure(error)
        assert code == ENVIRONMENT, message
        assert "out of memory" in message and "--batch-size" in message
        assert "--image-size" in message and "bug" not in message and "\n" not in message
    # The same name from elsewhere is not TensorFlow's: still a bug.
    assert describe_failure(type("ResourceExhaustedError", (Exception,), {})())[0] == INTERNAL


def test_a_failure_that_is_not_a_lost_peer_does_not_suggest_resume(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:1"]}}')
    internal = type("InternalError", (Exception,), {})
    internal.__module__ = "tensorflow.python.framework.errors_impl"
    code, message = describe_failure(internal("Collective instance 667 expected data_type 9"))
    assert code == INTERNAL and "--resume" not in message
