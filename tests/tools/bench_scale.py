"""Scale figures of ``make bench``: peak memory and images/s against dataset size.

Generated 160 px JPEG class folders (3,000, 30,000 and a larger set) go through
``edgetl train --weights none --alpha 0.35 --image-size 160 --epochs 1
--fine-tune-epochs 1`` and ``edgetl validate --data FOLDER``, each in its own
process so its peak resident memory (``wait4``'s ``ru_maxrss``) is its alone.
Page cache is not resident memory: what the kernel can drop under pressure
is not counted, which is what decides whether the kernel kills a run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import numpy as np

Log = Callable[[str], None]

IMAGE_SIZE = 160
SIZES = (3_000, 30_000, 60_000)
# The options (head phase only: fine-tuning 30,000 images takes ~11 minutes an
# epoch on two cores); the smallest size also runs one fine-tuning epoch for its speed.
TRAIN_ARGS = "--weights none --alpha 0.35 --image-size 160 --epochs 1 --fine-tune-epochs 0"
FINE_TUNE_ARGS = "--fine-tune-epochs 1 --patience 0"


def generated_folder(root: Path, count: int, log: Log = print) -> Path:
    """``count`` generated 160 px JPEGs in five class folders, written once and reused."""
    from PIL import Image  # noqa: F401  (Pillow saves the files)

    from toolchain.train.synthetic import CLASSES, draw_example

    folder = root / f"generated_{count}"
    stamp = folder / ".complete"
    if stamp.is_file():
        return folder
    log(f"scale: generating {count} images of {IMAGE_SIZE}px into {folder}")
    rng = np.random.default_rng(count)
    for index in range(count):
        name = CLASSES[index % len(CLASSES)]
        path = folder / name / f"{index:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_example(name, rng, IMAGE_SIZE).save(path, format="JPEG", quality=90)
    stamp.write_text(f"{count}\n")
    return folder


# Starts the command and reports its wait4 figures. Linux counts a child's peak RSS
# from the moment it was forked, so a child forked by this (TensorFlow-loaded) bench
# would inherit the bench's own resident size as a floor; forked by this small
# launcher, the floor is a few MiB.
LAUNCHER = """
import json, os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump({"exit": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss}, out)
"""


def measured(command: Sequence[str], log: Log = print) -> Dict[str, Any]:
    """Run ``command``; its exit code, wall seconds and peak RSS in MiB."""
    import tempfile

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        figures_path = Path(folder) / "figures.json"
        process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(figures_path), *command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert process.stderr is not None
        tail: List[str] = []
        for line in process.stderr:
            text = line.decode(errors="replace").rstrip()
            if text.startswith(("edgetl", "[")) or "epoch" in text:
                log(f"    {text}")
            tail = (tail + [text])[-5:]
        process.wait()
        figures = json.loads(figures_path.read_text())
    return {
        "exit": figures["exit"],
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mib": round(figures["maxrss_kib"] / 1024, 1),  # Linux reports KiB
        **({"stderr_tail": tail} if figures["exit"] else {}),
    }


def scale(out: Path, sizes: Sequence[int] = SIZES, log: Log = print) -> Dict[str, Any]:
    """Train and validate on each generated size; figures per size and their ratios."""
    edgetl = [sys.executable, "-m", "toolchain.cli"]
    data_root = out / "scale_data"
    results: Dict[str, Any] = {"train_args": TRAIN_ARGS, "sizes": {}}
    for count in sizes:
        free = os.statvfs(out).f_bavail * os.statvfs(out).f_frsize
        needed = count * (IMAGE_SIZE**2 * 3 + 8_000)  # decoded cache + the JPEGs
        if free < 2 * needed:
            log(f"scale: {count} images skipped, {free / 2**30:.1f} GiB free")
            results["sizes"][str(count)] = {"skipped": "not enough free disk"}
            continue
        folder = generated_folder(data_root, count, log)
        run = out / "scale_runs" / f"run_{count}"
        log(f"scale: training on {count} images")
        train = measured(
            edgetl
            + ["train", "--data", str(folder), "--out", str(run), "--force"]
            + TRAIN_ARGS.split(),
            log,
        )
        entry: Dict[str, Any] = {"train": train}
        if train["exit"] == 0:
            report = json.loads((run / "train_report.json").read_text())
            entry["train"]["images_per_second"] = report.get("images_per_second", {})
            exported = measured(
                edgetl
                + [
                    "export",
                    str(run),
                    "--quant",
                    "int8",
                    "--target",
                    "accelerator",
                    "--no-validate",
                    "--force",
                ],
                log,
            )
            entry["export"] = exported
            log(f"scale: validating on {count} images")
            validate = measured(
                edgetl + ["validate", str(run), "--data", str(folder), "--max-drop", "100"],
                log,
            )
            entry["validate"] = validate
        if count == min(sizes):
            log(f"scale: fine-tuning one epoch on {count} images")
            tuned = measured(
                edgetl
                + ["train", "--data", str(folder), "--out", str(run) + "_fine_tuned", "--force"]
                + TRAIN_ARGS.split()
                + FINE_TUNE_ARGS.split(),
                log,
            )
            if tuned["exit"] == 0:
                report = json.loads(
                    (Path(str(run) + "_fine_tuned") / "train_report.json").read_text()
                )
                tuned["images_per_second"] = report.get("images_per_second", {})
            entry["train_fine_tune"] = tuned
        results["sizes"][str(count)] = entry
        log(f"scale: {count}: {json.dumps(entry)}")
    done = {int(k): v for k, v in results["sizes"].items() if v.get("train", {}).get("exit") == 0}
    if len(done) >= 2:
        small = min(done)
        results["peak_rss_ratio_vs_smallest"] = {
            str(k): round(v["train"]["peak_rss_mib"] / done[small]["train"]["peak_rss_mib"], 2)
            for k, v in sorted(done.items())
        }
    return results


def scale_plot(results: Dict[str, Any], path: Path) -> Path:
    """Peak RSS and images/s against dataset size, train and validate, as one PNG."""
    from toolchain.core.plots import _pyplot, _save

    plt = _pyplot()
    done = sorted(
        (int(k), v) for k, v in results["sizes"].items() if v.get("train", {}).get("exit") == 0
    )
    fig, (memory, speed) = plt.subplots(1, 2, figsize=(10, 4))
    sizes = [k for k, _ in done]
    for step, marker in (("train", "o"), ("validate", "s")):
        points = [(k, v[step]) for k, v in done if v.get(step, {}).get("exit") == 0]
        memory.plot(
            [k for k, _ in points],
            [m["peak_rss_mib"] for _, m in points],
            marker=marker,
            label=step,
        )
    memory.set(xscale="log", xlabel="images", ylabel="peak RSS (MiB)", ylim=(0, None))
    memory.set_title("peak resident memory")
    memory.legend()
    head = [v["train"].get("images_per_second", {}).get("head") for _, v in done]
    speed.plot(sizes, head, marker="o", label="train: head phase")
    validate = [
        k / v["validate"]["seconds"] if v.get("validate", {}).get("exit") == 0 else None
        for k, v in done
    ]
    speed.plot(sizes, validate, marker="s", label="validate (whole command)")
    speed.set(xscale="log", xlabel="images", ylabel="images/s", ylim=(0, None))
    speed.set_title("throughput")
    speed.legend()
    for axis in (memory, speed):
        axis.set_xticks(sizes, [f"{k:,}" for k in sizes])
        axis.minorticks_off()
    return _save(plt, fig, path)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/bench"))
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    figures = scale(args.out, args.sizes)
    print(json.dumps(figures, indent=1))
    scale_plot(figures, args.out / "scale.png")
