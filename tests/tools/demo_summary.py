"""The few lines ``make demo`` ends with: what a user checks before shipping.

``python tests/tools/demo_summary.py RUN_DIR`` reads the run's ``parity.json`` and,
when ``edgetl bench --json`` wrote one there, ``bench.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List


def summary_lines(run_dir: Path) -> List[str]:
    parity = json.loads((run_dir / "parity.json").read_text())
    # The INT8 file the export shipped: full INT8 ("int8") or the repair's mix ("int8-mixed").
    int8 = next(m for m in parity["models"] if m["quant"].startswith("int8"))
    lines = [
        f"edgetl demo summary ({parity['n_images']} held-out images)",
        f"  Keras top-1      {parity['keras']['top1']:.4f}",
        f"  INT8 top-1       {int8['top1']:.4f}",
        f"  drop             {int8['top1_drop_pts']:+.2f} points",
        f"  agreement        {int8['agreement']:.4f}",
        f"  model size       {int8['size_bytes'] / 1024:.0f} KiB ({Path(int8['path']).name})",
    ]
    bench_path = run_dir / "bench.json"
    if bench_path.is_file():
        bench = json.loads(bench_path.read_text())
        folder = bench.get("folder", {})
        lines.append(
            f"  runner           {folder.get('images_per_s', 0):.0f} images/s end to end "
            f"({bench['invoke']['images_per_s']:.0f}/s invoke only; "
            f"{bench['runtime']} {bench['runtime_version']}, {bench['threads']} threads)"
        )
    return lines


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python tests/tools/demo_summary.py RUN_DIR", file=sys.stderr)
        sys.exit(2)
    print("\n".join(summary_lines(Path(sys.argv[1]))))
