"""The Raspberry Pi AI Camera: its IMX500 sensor runs the network, the Pi reads the scores.

``edgetl export RUN --target imx500`` writes ``packerOut.zip``; on the Pi,
``imx500-package`` turns it into ``network.rpk``, which the sensor loads.
Each camera frame then arrives with the network's output tensor in its
metadata (Picamera2's ``IMX500`` helper reads it), so there is nothing to
invoke here: ``edge.sources.sensor_frames`` yields frames that carry their scores, and
``SensorModel`` stands where a TFLite ``Classifier`` stands in a session,
giving the labels (``labels.txt`` from the export), the floor and the runtime
line. The rows, summary and stage timings are the CPU path's; "invoke" is the
sensor's own network time, as it reports it per frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from edge.errors import BadInput
from edge.image import DEFAULT_RESIZE
from edge.modelfile import LABELS_NAME, read_labels_file

NETWORK_SUFFIX = ".rpk"
# An imx500-package output starts with a firmware block whose magic is b"9464" (what
# Picamera2's IMX500 helper reads first when it loads the file).
NETWORK_MAGIC = b"9464"


def is_sensor_network(model: str | Path) -> bool:
    """A ``.rpk`` is an AI Camera network, not a TFLite file."""
    return Path(model).suffix.lower() == NETWORK_SUFFIX


@dataclass(frozen=True)
class SensorRuntime:
    """The runtime line of a session on the sensor (a ``RuntimeInfo`` look-alike)."""

    network: str
    name: str = "imx500"
    version: str = "on-sensor"
    threads: int = 0

    def describe(self) -> str:
        return (
            f"runtime: the AI Camera's IMX500 sensor runs {self.network} (via picamera2); "
            "frames start once the network is on the sensor (a first load can take a minute)"
        )


@dataclass
class SensorModel:
    """What a session needs of a model whose network runs on the sensor.

    No out-of-class output (the sensor network is the run's classes only) and a
    floor of 0 unless ``--threshold`` gives one: the IMX500 export has no card.
    """

    network: Path
    labels: List[str]
    labels_source: str
    unknown_index: Optional[int] = None
    floor: float = 0.0
    image_size: int = 0  # nothing is resized for the sensor: it crops and scales itself
    resize: str = DEFAULT_RESIZE

    @property
    def runtime(self) -> SensorRuntime:
        return SensorRuntime(str(self.network))

    def probabilities_from(self, scores: np.ndarray) -> np.ndarray:
        """The sensor's output row, checked against the labels."""
        row = np.asarray(scores, dtype=np.float32).reshape(-1)
        if row.size != len(self.labels):
            raise BadInput(
                f"{self.network}: the sensor gives {row.size} scores but {self.labels_source} "
                f"names {len(self.labels)} classes; use the labels.txt exported with it"
            )
        return row


def find_labels(network: Path) -> Path:
    """``labels.txt`` beside the network or one folder up (``imx500-package -o out``
    inside ``RUN/imx500/`` puts the network in ``out/``)."""
    for folder in (network.parent, network.parent.parent):
        if (folder / LABELS_NAME).is_file():
            return folder / LABELS_NAME
    raise BadInput(
        f"{network}: no {LABELS_NAME} beside it or one folder up; copy the {LABELS_NAME} "
        "that `edgetl export --target imx500` wrote beside network.rpk"
    )


def open_sensor_model(network: Path) -> SensorModel:
    """The network file checked, and its labels read (one line each for what is wrong)."""
    if network.is_dir() or not network.exists():
        what = "a folder" if network.is_dir() else "no such file"
        raise BadInput(
            f"{network}: {what}; give the network.rpk that imx500-package wrote "
            "from the export's packerOut.zip"
        )
    try:
        with open(network, "rb") as file:
            head = file.read(len(NETWORK_MAGIC))
    except OSError as error:
        raise BadInput(f"{network}: cannot be read ({error.strerror or error})") from error
    if head.startswith(b"PK"):
        raise BadInput(
            f"{network}: a zip archive (packerOut.zip?), not a packaged network; "
            "run `imx500-package -i packerOut.zip -o out` and give out/network.rpk"
        )
    if head != NETWORK_MAGIC:
        raise BadInput(
            f"{network}: not an IMX500 network package (it does not start as one); give the "
            "network.rpk that imx500-package wrote"
        )
    path = find_labels(network)
    names = read_labels_file(path)
    if not names:
        raise BadInput(f"{path}: holds no labels; use the labels.txt the export wrote")
    return SensorModel(network, names, str(path))
