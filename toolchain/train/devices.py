"""Which devices train, and how: GPUs, mixed precision, tf.distribute strategies.

- ``auto``: MirroredStrategy over every local GPU when there are several,
  otherwise the default strategy (one GPU or the CPU).
- ``mirrored``: MirroredStrategy even on one device (it runs on CPU too, over
  every logical CPU device when several are configured).
- ``multiworker``: MultiWorkerMirroredStrategy, configured by ``TF_CONFIG``
  (one JSON per machine naming the cluster and this worker's index).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, List, NamedTuple, Optional, Tuple

from edge.errors import BadInput, MissingEnvironment
from toolchain.core.options import STRATEGIES

TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}'
)
TASK_TYPES = ("chief", "worker")  # what MultiWorkerMirroredStrategy trains with


def address_problem(address: object) -> Optional[str]:
    """Why one cluster address is not ``host:port`` (port 1-65535), or None."""
    if not isinstance(address, str):
        return f"{address!r} is not a host:port string"
    host, _, port = address.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")  # an IPv6 address: [::1]:12345
    host = host[1:-1] if bracketed else host
    if not host or (":" in host and not bracketed) or any(c.isspace() for c in host):
        return f"{address!r} is not host:port"
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        return f"{address!r} needs a port from 1 to 65535"
    return None


def _cluster_problem(cluster: object) -> Optional[str]:
    if not isinstance(cluster, dict) or not cluster:
        return f"TF_CONFIG needs a cluster of worker addresses, e.g. {TF_CONFIG_EXAMPLE}"
    others = sorted(set(cluster) - set(TASK_TYPES))
    if others:
        return (
            f"TF_CONFIG's cluster lists {', '.join(map(repr, others))}; multiworker training "
            "takes only chief and worker tasks"
        )
    for kind in TASK_TYPES:
        if not isinstance(cluster.get(kind, []), list):
            return f"TF_CONFIG's cluster {kind} must be a list of host:port addresses"
    if not cluster.get("worker") and not cluster.get("chief"):
        return f"TF_CONFIG's cluster lists no workers, e.g. {TF_CONFIG_EXAMPLE}"
    if len(cluster.get("chief", [])) > 1:
        return "TF_CONFIG's cluster lists several chiefs; list at most one"
    addresses = [*cluster.get("chief", []), *cluster.get("worker", [])]
    for address in addresses:
        problem = address_problem(address)
        if problem:
            return f"TF_CONFIG's cluster address {problem}"
    repeated = sorted({a for a in addresses if addresses.count(a) > 1})
    if repeated:
        return (
            f"TF_CONFIG's cluster lists {', '.join(repeated)} more than once; "
            "give every task its own host:port"
        )
    return None


def tf_config_problem(text: Optional[str]) -> Optional[str]:
    """Why ``TF_CONFIG`` cannot start a worker, or None: a pure check run before any file
    is read or written, because TensorFlow's own errors come later, after the data is
    decoded, and as tracebacks (a chief the cluster does not list even passes its
    constructor and fails at the first step)."""
    if not text:
        return f"set TF_CONFIG on every machine, e.g. {TF_CONFIG_EXAMPLE}"
    try:
        config = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return "TF_CONFIG is not valid JSON"
    if not isinstance(config, dict):
        return f"TF_CONFIG must be a JSON object, e.g. {TF_CONFIG_EXAMPLE}"
    cluster, task = config.get("cluster"), config.get("task")
    problem = _cluster_problem(cluster)
    if problem:
        return problem
    if not isinstance(task, dict) or task.get("type") not in TASK_TYPES:
        return (
            'TF_CONFIG needs a task of type chief or worker, such as {"type": "worker", "index": 0}'
        )
    kind, index = task["type"], task.get("index")
    tasks = cluster.get(kind, [])  # type: ignore[union-attr]
    if not tasks:
        return (
            f"TF_CONFIG's task is a {kind} but the cluster lists no {kind}; add it to the cluster"
        )
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(tasks):
        return (
            f"TF_CONFIG task index {index!r} is not one of the cluster's {len(tasks)} {kind} "
            f"task(s); use 0 to {len(tasks) - 1}"
        )
    return None


class WorkerRole(NamedTuple):
    """This process's place in a multi-worker run."""

    workers: int  # how many processes train together
    index: int  # this one's: 0 is the chief, which alone writes the run folder
    chief: bool


def cluster_tasks(text: str) -> List[Tuple[str, str]]:
    """``(name, host:port)`` of every task of a checked ``TF_CONFIG``, the chief first, in
    the order tf.distribute counts them; the name (``worker 1``) is what a user reads."""
    cluster = json.loads(text)["cluster"]
    return [
        (f"{kind} {i}", address)
        for kind in TASK_TYPES
        for i, address in enumerate(cluster.get(kind, []))
    ]


def worker_role(strategy: str, text: Optional[str] = None) -> Optional[WorkerRole]:
    """Read from ``TF_CONFIG`` (or ``text``); None unless ``--strategy multiworker``.

    The chief is the ``chief`` task when the cluster names one, else worker 0, as
    tf.distribute counts them; a TF_CONFIG with a problem gives None here and is
    refused in one line by the option checks.
    """
    if strategy != "multiworker":
        return None
    text = os.environ.get("TF_CONFIG") if text is None else text
    if not text or tf_config_problem(text):
        return None
    task = json.loads(text)["task"]
    names = [name for name, _ in cluster_tasks(text)]
    index = names.index(f"{task['type']} {task['index']}")
    return WorkerRole(len(names), index, index == 0)


def describe_devices(tf: Any) -> Tuple[List[str], str]:
    gpus = tf.config.list_physical_devices("GPU")
    names = [gpu.name for gpu in gpus]
    return names, (
        f"{len(gpus)} GPU(s): {', '.join(names)}" if gpus else "no GPU, training on the CPU"
    )


def choose_strategy(tf: Any, name: str) -> Tuple[Any, str]:
    if name not in STRATEGIES:
        raise BadInput(f"--strategy {name}: choose one of {', '.join(STRATEGIES)}")
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:  # allocate GPU memory as needed instead of all of it at start
        with contextlib.suppress(RuntimeError):  # already initialised: keep as is
            tf.config.experimental.set_memory_growth(gpu, True)
    if name == "multiworker":
        problem = tf_config_problem(os.environ.get("TF_CONFIG"))
        if problem:
            raise BadInput(f"--strategy multiworker: {problem}")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        mean_scalar_logs_across_workers(tf)
    elif name == "mirrored" or (name == "auto" and len(gpus) > 1):
        # Without GPUs, mirror over the logical CPU devices when there are several
        # (tf.config.set_logical_device_configuration): how mirrored runs are tested.
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(None if gpus or len(cpus) < 2 else cpus)
    else:
        strategy = tf.distribute.get_strategy()
    replicas = getattr(strategy, "num_replicas_in_sync", 1)
    return strategy, f"{type(strategy).__name__} with {replicas} replica(s)"


def mean_scalar_logs_across_workers(tf: Any) -> None:
    """Let Keras 3 average a multi-worker run's per-step losses and metrics.

    Keras 3 (3.15 here) averages each step's logs across workers with
    ``strategy.reduce("MEAN", value, axis=0)``; the logs are scalars, which have
    no axis 0, so ``fit`` under MultiWorkerMirroredStrategy stops at its first
    step ("Invalid reduction dimension 0 for input with 0 dimensions"; tracked
    upstream as TensorFlow issue 72388). Scalars are averaged over no axis instead;
    everything else goes through Keras unchanged. Applied only when a
    multi-worker strategy is made, and only if Keras still has the function.
    """
    try:
        from keras.src.backend.tensorflow import trainer
    except ImportError:
        return
    original = getattr(trainer, "reduce_per_replica", None)
    if original is None or getattr(original, "edgetl_scalar_mean", False):
        return

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction not in ("auto", "mean") or not isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy
        ):
            return original(values, strategy, reduction)

        def mean(value: Any) -> Any:
            local = strategy.experimental_local_results(value)[0]
            return strategy.reduce("MEAN", value, axis=0 if local.shape.rank else None)

        return tf.nest.map_structure(mean, values)

    reduce_per_replica.edgetl_scalar_mean = True  # type: ignore[attr-defined]
    trainer.reduce_per_replica = reduce_per_replica


def enable_mixed_precision(tf: Any, keras: Any) -> str:
    """float16 compute on GPU; the classifier's output layer stays float32 (model.py)."""
    if not tf.config.list_physical_devices("GPU"):
        raise MissingEnvironment(
            "--mixed-precision needs a GPU (none found); on the CPU float16 compute is slower, "
            "drop the option"
        )
    keras.mixed_precision.set_global_policy("mixed_float16")
    return "mixed precision: float16 compute, float32 variables and output"
