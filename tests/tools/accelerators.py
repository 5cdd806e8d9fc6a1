"""``make accelerators``: the README recipe exported for each accelerator, each file judged.

A development tool, not part of the wheel. It trains the README's recipe once on
``flowers128`` (alpha 0.35, 128 px, the shared ImageNet weights; kept in
``OUT/run`` and reused), then runs ``edgetl export --target T`` on a copy of the
run for every accelerator target, in a fresh process as a user would, and
collects from each export's own report (the shipped one, or ``rejected/`` when
the budget or a compiler refused it): the files, their size, the compilers'
verdicts (the Edge TPU's documented rules, Coral's compiler where installed,
Arm's Vela), top-1 drop and agreement against Keras on the test split, and
whether the budget was met. The IMX500 (Raspberry Pi AI Camera) row is Sony's
converter's verdict (does the network fit the sensor's 8 MB?) from the export's
``imx500/imx500_report.json``; ``make accelerators`` builds its venv first
(``make setup-imx500``). Writes ``OUT/report.json`` and ``OUT/report.md``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional

import typer

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_speed import machine  # noqa: E402
from recipe import (  # noqa: E402
    DEFAULT_SHARED,
    RECIPE,
    Retrain,
    Shared,
    edgetl,
    error_line,
    shared_inputs,
    train_recipe,
)

TARGETS = ("accelerator", "edgetpu", "ethos-u", "imx500")


def target_row(run: Path, target: str, out: Path) -> Dict[str, Any]:
    """Export a copy of ``run`` for ``target``; the figures its report keeps."""
    copy = out / target
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("model_*.tflite*", "rejected"))
    typer.echo(f"accelerators: export --target {target}", err=True)
    result = edgetl("export", str(copy), "--force", "--target", target)
    folder = copy if result.returncode == 0 else copy / "rejected"
    row: Dict[str, Any] = {"target": target, "exit_code": result.returncode}
    row["error"] = error_line(result)
    if target == "imx500":
        return imx500_row(row, copy / ("imx500" if result.returncode == 0 else "rejected-imx500"))
    report_path = folder / "export_report.json"
    if not report_path.is_file():
        return row
    report = json.loads(report_path.read_text())
    entry = next((m for m in report["models"] if m["path"].startswith("model_int8")), None)
    if entry is None:
        return row
    row["file"] = entry["path"]
    row["size_bytes"] = entry.get("size_bytes")
    row["test"] = entry.get("test")
    row["budget_met"] = result.returncode == 0
    row["accelerators"] = entry.get("accelerators")
    return row


def imx500_row(row: Dict[str, Any], folder: Path) -> Dict[str, Any]:
    """The IMX500 export's figures: its own report beside ``packerOut.zip``."""
    report_path = folder / "imx500_report.json"
    if not report_path.is_file():
        return row
    report = json.loads(report_path.read_text())
    packed = folder / "packerOut.zip"
    row["file"] = "imx500/packerOut.zip"
    row["size_bytes"] = packed.stat().st_size if packed.is_file() else None
    row["test"] = report.get("test")
    row["budget_met"] = row["exit_code"] == 0
    row["imx500"] = report.get("memory")
    row["quantization"] = [attempt["method"] for attempt in report.get("attempts", [])]
    if row["exit_code"] == 0:  # validate runs the network again, in the IMX500 venv
        checked = edgetl("validate", str(folder.parent))
        parity = folder.parent / "parity.json"
        if parity.is_file():
            models = json.loads(parity.read_text())["models"]
            entry = next((m for m in models if m["path"].endswith("packerOut.zip")), None)
            keys = ("top1_drop_pts", "agreement", "n_images")
            row["validate"] = {k: entry[k] for k in keys} if entry else None
        row["validate_exit_code"] = checked.returncode
    return row


def imx500_cell(row: Dict[str, Any]) -> str:
    memory = row.get("imx500")
    tried = " then ".join(m.upper() for m in row.get("quantization", []))
    if not memory:
        return f"not compiled: {tried} missed the budget" if tried else "–"
    fits = "fits in the chip" if memory.get("Fit In Chip") else "does NOT fit the chip"
    return (
        f"{fits}: {memory.get('Memory Usage')} of {memory.get('Total Memory Available On Chip')}"
        f" (every op on the sensor; MCT {tried})" + validate_text(row.get("validate"))
    )


def validate_text(figures: Any) -> str:
    if not figures:
        return ""
    return (
        f"; `validate` re-ran it: agreement {figures['agreement']:.3f}, drop "
        f"{figures['top1_drop_pts']:+.2f} pts on {figures['n_images']} images"
    )


def verdict_cells(row: Dict[str, Any]) -> List[str]:
    """Edge TPU rules, Coral's compiler, Vela: one cell each."""
    found = row.get("accelerators") or {}
    rules = found.get("edgetpu_rules") or {}
    tpu = found.get("edgetpu_compiler") or {}
    vela = found.get("ethos_u") or {}
    rule_cell = "none broken" if rules.get("ok") else "; ".join(rules.get("broken", [])) or "–"
    if rules.get("ok"):
        rule_cell += f" (runtime >= {rules['min_edgetpu_runtime']})"
    tpu_cell = (
        f"{tpu['edgetpu_ops']} of {tpu['n_ops']} ops on the Edge TPU"
        if "n_ops" in tpu
        else "not run: " + tpu.get("not_checked", "–").split(" (")[0]
    )
    vela_cell = (
        f"{vela['npu_ops']} NPU / {vela['cpu_ops']} CPU ops, SRAM {vela['sram_kib']} KiB"
        if "npu_ops" in vela
        else "not run: " + vela.get("not_checked", "–").split(" (")[0]
    )
    return [rule_cell, tpu_cell, vela_cell]


def markdown(rows: List[Dict[str, Any]], recipe: str) -> str:
    lines = [
        "# Accelerator exports of the README recipe",
        "",
        f"{recipe}; figures on the run's test split; this machine: see report.json.",
        "",
        "| target | file | size (KiB) | Edge TPU rules | Coral compiler | Arm Vela (Ethos-U55-128) "
        "| Sony imxconv-tf (IMX500) | top-1 drop (pts) | agreement | budget met | exit |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        test = row.get("test") or {}
        size = f"{row['size_bytes'] / 1024:.0f}" if row.get("size_bytes") else "–"
        drop = f"{test['top1_drop_pts']:+.2f}" if "top1_drop_pts" in test else "–"
        agreement = f"{test['agreement']:.4f}" if "agreement" in test else "–"
        cells = verdict_cells(row) if row["target"] != "imx500" else ["–", "–", "–"]
        lines.append(
            f"| {row['target']} | {row.get('file', '–')} | {size} | {cells[0]} | {cells[1]} | "
            f"{cells[2]} | {imx500_cell(row)} | {drop} | {agreement} | "
            f"{'yes' if row.get('budget_met') else 'no'} | {row['exit_code']} |"
        )
    misses = [f"- {r['target']}: {r['error']}" for r in rows if r.get("error")]
    if misses:
        lines += ["", "Why an export exited non-zero:", "", *misses]
    return "\n".join(lines) + "\n"


def main(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("build/accelerators"),
    shared: Shared = DEFAULT_SHARED,
    retrain: Retrain = False,
    run: Annotated[
        Optional[Path], typer.Option(help="Use this trained run instead (e.g. a quality fold's).")
    ] = None,
) -> None:
    photos, weights = shared_inputs(shared)
    if not (photos.is_dir() and weights.is_file()):
        typer.echo(f"accelerators: skipped, {photos} or {weights} is absent", err=True)
        raise typer.Exit(0)
    out.mkdir(parents=True, exist_ok=True)
    given = run is not None
    run = run or out / "run"
    if not given and (retrain or not (run / "train_report.json").is_file()):
        typer.echo("accelerators: training the README recipe on flowers128", err=True)
        result = train_recipe(photos, weights, run)
        if result.returncode != 0:
            typer.echo(f"accelerators: training failed: {error_line(result)}", err=True)
            raise typer.Exit(1)
    rows = [target_row(run, target, out) for target in TARGETS]
    report = {"machine": machine(), "recipe": RECIPE, "run": str(run), "targets": rows}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(rows, RECIPE))
    typer.echo(f"accelerators: wrote {out / 'report.json'} and report.md", err=True)


if __name__ == "__main__":
    typer.run(main)
