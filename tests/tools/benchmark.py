"""``make bench``: speed (and training) figures as JSON, with the machine they came from.

A development tool, not part of the wheel: ``python tests/tools/benchmark.py --out build/bench``.
The flower photos and ImageNet weights come from the shared folder beside the
repository (``--shared``, or ``EDGETL_SHARED``); without them the speed figures use
generated photos and the training figures are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from bench_scale import SIZES, scale, scale_plot
from bench_speed import machine, speed
from bench_training import training
from recipe import DEFAULT_SHARED, Shared, shared_inputs

from edge import atomic

app = typer.Typer(add_completion=False, help=__doc__.splitlines()[0])


@app.command()
def bench(
    out: Annotated[Path, typer.Option(help="Folder for bench.json.")] = Path("build/bench"),
    runs: Annotated[int, typer.Option(min=1, help="invoke() calls per latency round.")] = 200,
    skip_training: Annotated[
        bool, typer.Option("--skip-training", help="Inference figures only: no training runs.")
    ] = False,
    skip_scale: Annotated[
        bool,
        typer.Option(
            "--skip-scale",
            help="No scale figures (peak memory and images/s against dataset size).",
        ),
    ] = False,
    scale_sizes: Annotated[
        str, typer.Option(help="Generated dataset sizes for the scale figures, comma-separated.")
    ] = ",".join(str(n) for n in SIZES),
    shared: Shared = DEFAULT_SHARED,
) -> None:
    """Write OUT/bench.json: INT8 vs float32, the folder pipeline vs the invoke and
    label_image loops, then (unless --skip-training) training and parity figures, then
    (unless --skip-scale) peak memory and images/s against dataset size (scale.png)."""
    # How the report names the shared folder when its files are absent.
    shown = "../shared" if shared.resolve() == DEFAULT_SHARED.resolve() else str(shared)
    photos, weights = shared_inputs(shared)
    report = speed(out, photos, shown, runs)
    if not skip_training:
        report["training"] = training(photos, weights, shown)
        atomic.write_json(out / "bench.json", report)
    if not skip_scale:
        sizes = [int(n) for n in scale_sizes.split(",") if n.strip()]
        report["scale"] = {"machine": machine(), **scale(out, sizes)}
        scale_plot(report["scale"], out / "scale.png")
        atomic.write_json(out / "bench.json", report)


if __name__ == "__main__":
    app()
