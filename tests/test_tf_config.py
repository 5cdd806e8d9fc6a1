"""TF_CONFIG checked whole before any work (toolchain/train/devices.py): one line, exit 2.

TensorFlow's own checks come after the data is decoded, and some not at all: a
chief the cluster does not list passes its constructor and fails later (exit 4).
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import assert_one_line_error, run_cli
from toolchain.train.devices import cluster_tasks, tf_config_problem, worker_role

WORKERS = ["127.0.0.1:2001", "127.0.0.1:2002"]


def config(cluster, task) -> str:
    return json.dumps({"cluster": cluster, "task": task})


@pytest.mark.parametrize(
    "cluster, task, fragment",
    [
        ({"worker": WORKERS}, {"type": "chief", "index": 0}, "lists no chief"),
        (
            {"worker": WORKERS, "chief": ["h:1", "h:2"]},
            {"type": "chief", "index": 0},
            "several chiefs",
        ),
        ({"worker": WORKERS}, {"type": "ps", "index": 0}, "chief or worker"),
        ({"worker": WORKERS, "ps": ["h:9"]}, {"type": "worker", "index": 0}, "'ps'"),
        ({"worker": WORKERS}, {"type": "worker", "index": 2}, "0 to 1"),
        ({"worker": WORKERS}, {"type": "worker", "index": -1}, "0 to 1"),
        ({"worker": WORKERS}, {"type": "worker", "index": True}, "True"),
        ({"worker": WORKERS}, {"type": "worker", "index": "0"}, "'0'"),
        ({"worker": WORKERS}, {"type": "worker"}, "None"),
        ({"worker": ["127.0.0.1"]}, {"type": "worker", "index": 0}, "not host:port"),
        ({"worker": ["h:0"]}, {"type": "worker", "index": 0}, "1 to 65535"),
        ({"worker": ["h:65536"]}, {"type": "worker", "index": 0}, "1 to 65535"),
        ({"worker": ["h:12x"]}, {"type": "worker", "index": 0}, "1 to 65535"),
        ({"worker": [":123"]}, {"type": "worker", "index": 0}, "not host:port"),
        ({"worker": [7]}, {"type": "worker", "index": 0}, "not a host:port"),
        ({"worker": ["h:1", "h:1"]}, {"type": "worker", "index": 0}, "more than once"),
        ({"worker": ["h:1"], "chief": ["h:1"]}, {"type": "chief", "index": 0}, "more than once"),
        ({"worker": "h:1"}, {"type": "worker", "index": 0}, "must be a list"),
        ({}, {"type": "worker", "index": 0}, "cluster"),
        ({"worker": []}, {"type": "worker", "index": 0}, "no workers"),
    ],
)
def test_a_tf_config_problem_is_named(cluster, task, fragment):
    problem = tf_config_problem(config(cluster, task))
    assert problem is not None and fragment in problem, problem
    assert worker_role("multiworker", config(cluster, task)) is None


def test_valid_clusters_and_where_each_task_counts():
    chief = {"worker": WORKERS, "chief": ["10.0.0.9:2000"]}
    assert tf_config_problem(config(chief, {"type": "chief", "index": 0})) is None
    assert worker_role("multiworker", config(chief, {"type": "chief", "index": 0})).index == 0
    assert worker_role("multiworker", config(chief, {"type": "worker", "index": 1})).index == 2
    ipv6 = {"worker": ["[::1]:2001", "[::1]:2002"]}
    assert tf_config_problem(config(ipv6, {"type": "worker", "index": 1})) is None
    assert [name for name, _ in cluster_tasks(config(chief, {"type": "chief", "index": 0}))] == [
        "chief 0", "worker 0", "worker 1",
    ]  # fmt: skip
    for text in ("", None, "{not json", "[1]"):
        assert tf_config_problem(text)


def test_a_chief_the_cluster_does_not_list_is_refused_before_decoding(tmp_path):
    text = config({"worker": WORKERS}, {"type": "chief", "index": 0})
    result = run_cli(
        "train", "--out", str(tmp_path / "run"), "--strategy", "multiworker",
        "--data", "synthetic", "--synthetic-per-class", "3", "--image-size", "32",
        env={"TF_CONFIG": text}, timeout=120,
    )  # fmt: skip
    assert_one_line_error(result, 2, "TF_CONFIG", "lists no chief")
    assert "decoding" not in result.stderr and not (tmp_path / "run").exists()
