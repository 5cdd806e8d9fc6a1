"""Latency and throughput of a classifier, measured the way pycoral does: the
invoke loop on its own, then the whole folder pipeline, so the share of time
spent outside ``invoke()`` is a number, not a guess."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from edge.classifier import Classifier
from edge.pipeline import classify_files


def percentiles(samples_ms: List[float]) -> Dict[str, float]:
    values = np.asarray(samples_ms, dtype=np.float64)
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 4),
        "p90_ms": round(float(np.percentile(values, 90)), 4),
        "p99_ms": round(float(np.percentile(values, 99)), 4),
        "mean_ms": round(float(values.mean()), 4),
    }


def invoke_latency(
    classifier: Classifier, runs: int = 100, warmup: int = 10, seed: int = 0
) -> Dict[str, Any]:
    """Time ``invoke()`` alone on a fixed image already in the input tensor."""
    rng = np.random.default_rng(seed)
    size = classifier.image_size
    classifier.set_input(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    for _ in range(warmup):
        classifier.invoke()
    samples = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        classifier.invoke()
        samples.append((time.perf_counter() - start) * 1000.0)
    result = percentiles(samples)
    result["images_per_s"] = round(len(samples) / (sum(samples) / 1000.0), 2)
    result["runs"] = len(samples)
    return result


def folder_throughput(classifier: Classifier, paths: List[Path], k: int = 3) -> Dict[str, Any]:
    """End-to-end images/s over files, with the mean time of each stage per image.

    Decode and resize run in the producer thread, overlapped with invoke, so
    the stages add up to more than the wall time per image; the share of wall
    time outside ``invoke()`` is what overlapping failed to hide.
    """
    start = time.perf_counter()
    # Plain running sums: the loop's own cost is part of the wall time measured.
    decode = resize = invoke = post = 0.0
    done = errors = 0
    for result in classify_files(classifier, paths, k):
        if result.error:
            errors += 1
            continue
        done += 1
        decode += result.decode_ms
        resize += result.resize_ms
        invoke += result.invoke_ms
        post += result.post_ms
    seconds = time.perf_counter() - start
    sums = {"decode": decode, "resize": resize, "invoke": invoke, "post": post}
    return {
        "images": done,
        "unreadable": errors,
        "seconds": round(seconds, 4),
        "images_per_s": round(done / seconds, 2) if seconds > 0 else 0.0,
        **{
            f"{stage}_ms_mean": round(total / done, 4) if done else 0.0
            for stage, total in sums.items()
        },
        "share_outside_invoke": round(1 - invoke / 1000.0 / seconds, 4) if seconds > 0 else 0.0,
    }
