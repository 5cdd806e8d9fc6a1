"""How an exception becomes one line and an exit code (toolchain/failures.py)."""

from __future__ import annotations

from edge.errors import ENVIRONMENT, INTERNAL
from toolchain.failures import REASON_CHARS, describe_failure


def test_a_lost_worker_is_the_environment_and_says_how_to_resume(monkeypatch):
    from toolchain.quiet import tensorflow

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
