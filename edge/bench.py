"""Latency and throughput of a classifier, measured the way pycoral does: the
invoke loop on its own, then the whole folder pipeline, so the share of time
spent outside ``invoke()`` is a number, not a guess."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from edge.classifier import Classifier, quantize_input
from edge.errors import BadInput
from edge.image import UnreadableImage, opened_image
from edge.modelfile import printable
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
    done = 0
    unreadable: List[str] = []
    for result in classify_files(classifier, paths, k):
        if result.error:
            unreadable.append(result.error)
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
        "unreadable": len(unreadable),
        "unreadable_files": unreadable,
        "seconds": round(seconds, 4),
        "images_per_s": round(done / seconds, 2) if seconds > 0 else 0.0,
        **{
            f"{stage}_ms_mean": round(total / done, 4) if done else 0.0
            for stage, total in sums.items()
        },
        "share_outside_invoke": round(1 - invoke / 1000.0 / seconds, 4) if seconds > 0 else 0.0,
    }


def sequential_throughput(classifier: Classifier, paths: List[Path]) -> Dict[str, Any]:
    """Images/s of TensorFlow's ``label_image.py`` loop: the baseline the pipeline beats.

    One image at a time, nothing overlapped: open with Pillow, convert to RGB,
    resize (Pillow's default filter), a fresh batch array, ``set_tensor``,
    ``invoke``, read the scores. Files are opened through ``edge.image.opened_image``
    as the pipeline's are, so this loop skips exactly the files the pipeline skips
    (unreadable, a decompression bomb, gone since the listing), uncounted.
    """
    size = classifier.image_size
    index = classifier.interpreter.get_input_details()[0]["index"]
    dtype, scale, zero = classifier.input_dtype, classifier.input_scale, classifier.input_zero_point
    as_is = dtype == np.uint8 and scale == 1.0 and zero == 0  # decoder bytes go straight in
    done = 0
    start = time.perf_counter()
    for path in paths:
        try:  # label_image's decode, behind the pipeline's guard (bombs, vanished files)
            with opened_image(path) as image:
                pixels = np.asarray(image.convert("RGB").resize((size, size)), dtype=np.uint8)
        except UnreadableImage:
            continue
        tensor = pixels if as_is else quantize_input(pixels, dtype, scale, zero)
        classifier.interpreter.set_tensor(index, np.expand_dims(tensor, 0))
        classifier.invoke()
        classifier.output_probabilities()
        done += 1
    seconds = time.perf_counter() - start
    return {"images": done, "images_per_s": round(done / seconds, 2) if seconds > 0 else 0.0}


def median_run(runs: List[Dict[str, Any]], key: str = "images_per_s") -> Dict[str, Any]:
    """The run whose ``key`` is the median of the runs (the upper one of an even count)."""
    return sorted(runs, key=lambda r: r[key])[len(runs) // 2]


def warm_up(classifier: Classifier, paths: List[Path]) -> None:
    """Read every file once (later runs pay the page cache, not the disk) and run both
    loops once unmeasured: a first run was 10-20% slower."""
    for path in paths:
        with contextlib.suppress(OSError):  # gone already: both loops skip and list it
            path.read_bytes()
    folder_throughput(classifier, paths[:50])
    sequential_throughput(classifier, paths[:50])


def folder_vs_sequential(
    classifier: Classifier, paths: List[Path], rounds: int = 3
) -> Dict[str, Any]:
    """The pipeline and the label_image loop on the same files, measured fairly:
    after ``warm_up``, ``rounds`` interleaved runs; the median run of each is kept."""
    warm_up(classifier, paths)
    folders, loops = [], []
    for _ in range(max(1, rounds)):
        folders.append(folder_throughput(classifier, paths))
        loops.append(sequential_throughput(classifier, paths))
    folder, loop = median_run(folders), median_run(loops)
    if not folder["images"]:
        first = folder["unreadable_files"][0] if folder["unreadable_files"] else "none listed"
        raise BadInput(
            f"none of the {len(paths)} image(s) could be read (first: {first}); "
            "give a folder of JPEG/PNG images"
        )
    return {
        "folder": folder,
        "label_image_loop": loop,
        "folder_over_label_image_loop": (
            round(folder["images_per_s"] / loop["images_per_s"], 3)
            if loop["images_per_s"]
            else None
        ),
        "rounds": len(folders),
    }


def summary_lines(figures: Dict[str, Any]) -> List[str]:
    """What ``edgetl bench`` prints: invoke percentiles, then the folder comparison if run."""
    inv = figures["invoke"]
    lines = [
        f"invoke: p50 {inv['p50_ms']:.3f} ms  p90 {inv['p90_ms']:.3f} ms  p99 {inv['p99_ms']:.3f} ms  "
        f"{inv['images_per_s']:.1f} images/s"
    ]
    if "folder" not in figures:
        return lines
    folder, sequential = figures["folder"], figures["label_image_loop"]
    lines.append(
        f"folder: {folder['images']} images  {folder['images_per_s']:.1f} images/s  "
        f"decode {folder['decode_ms_mean']:.3f} ms  resize {folder['resize_ms_mean']:.3f} ms  "
        f"invoke {folder['invoke_ms_mean']:.3f} ms  post {folder['post_ms_mean']:.3f} ms  "
        f"{100 * folder['share_outside_invoke']:.0f}% of wall time outside invoke"
    )
    lines += [f"skipped: {printable(problem)}" for problem in folder["unreadable_files"]]
    if figures["folder_over_label_image_loop"]:
        lines.append(
            f"label_image-style loop (one image at a time): "
            f"{sequential['images_per_s']:.1f} images/s; the pipeline is "
            f"{figures['folder_over_label_image_loop']:.2f}x that "
            f"(medians of {figures['rounds']} interleaved runs after a warm-up)"
        )
    return lines
