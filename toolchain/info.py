"""``edgetl info MODEL``: what a .tflite says about itself, as lines to print.

Labels, card, tensors, ops (TensorFlow's op table where it is installed, the
interpreter's otherwise), the Edge TPU's documented rules, and which installed
runtimes load and run it. A generator, so ``cli.py`` only prints.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterator

from edge import edgetpu_check
from edge.classifier import Classifier
from edge.compat import probe_all
from edge.errors import EdgetlError
from edge.tensors import operators, tensor_table
from toolchain.export.modelinfo import inspect_tflite


def info_lines(model: Path) -> Iterator[str]:
    """Each line of ``edgetl info``; the model is loaded first, so a bad file fails
    before anything is printed."""
    classifier = Classifier(model, threads=1)
    card = classifier.card.metadata
    yield f"{model}: {model.stat().st_size} bytes"
    yield f"labels ({classifier.card.labels_source}): {', '.join(classifier.labels)}"
    for key in ("quant", "io", "image_size", "edgetl_version", "float_layers"):
        if key in card:
            yield f"{key}: {card[key]}"
    if card.get("input"):
        yield f"input contract: {json.dumps(card['input'])}"
    for row in tensor_table(classifier.interpreter):
        yield (
            f"{row['kind']}: {row['dtype']} {row['shape']} scale {row['scale']:.6g} "
            f"zero point {row['zero_point']}"
        )
    try:
        details = inspect_tflite(model)
        yield (
            "ops: "
            + ", ".join(f"{n} v{o['version']} x{o['count']}" for n, o in details["ops"].items())
        )
        yield f"min runtime version (converter's estimate): {details['min_runtime_version']}"
        if details["size_vs_float32_weights"]:
            yield (
                f"size vs float32 weights: {details['size_vs_float32_weights']:.2f}x "
                f"({details['float32_weight_bytes']} bytes as float32)"
            )
    except EdgetlError:  # no TensorFlow here: op counts from the interpreter instead
        ops = Counter(op["op_name"] for op in operators(classifier.interpreter))
        yield ("ops: " + ", ".join(f"{name} x{count}" for name, count in sorted(ops.items())))
    yield (edgetpu_check.summary(edgetpu_check.check(classifier.interpreter)))
    for result in probe_all(str(model)):
        status = "loads and runs" if result["ok"] else f"fails: {result['error']}"
        yield f"runtime {result['runtime']} {result.get('version', '')}: {status}"
    if card.get("train"):
        yield ("train: " + json.dumps(card["train"]))
