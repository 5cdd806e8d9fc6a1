"""A generated image-folder dataset: offline, deterministic, learnable in seconds.

Five classes that differ in both shape and colour family, drawn on noisy
backgrounds at random positions, sizes and shades, written as real JPEG and
PNG files in class folders. It exercises the same folder loader, decoder and
device path as a user's photos, so the demo and the tests run the real flow
on a machine with no network. Same seed, same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
from PIL import Image, ImageDraw

from edge.atomic import atomic_path

CLASSES = ("circle", "square", "triangle", "stripes", "cross")
# A hue family per class (RGB centre); shades are jittered around it.
_COLOURS = {
    "circle": (220, 60, 50),
    "square": (50, 170, 70),
    "triangle": (50, 90, 220),
    "stripes": (230, 200, 40),
    "cross": (180, 60, 200),
}
SOURCE_SIZE = 112


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.integers(60, 200)
    noise = rng.normal(0, 18, (size, size, 3)) + base
    return Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8), "RGB")


def _colour(rng: np.random.Generator, name: str):
    return tuple(int(np.clip(c + rng.integers(-35, 36), 0, 255)) for c in _COLOURS[name])


def draw_example(name: str, rng: np.random.Generator, size: int = SOURCE_SIZE) -> Image.Image:
    """One image of class ``name``."""
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    colour = _colour(rng, name)
    extent = int(size * rng.uniform(0.35, 0.7))
    x0 = int(rng.integers(0, size - extent))
    y0 = int(rng.integers(0, size - extent))
    x1, y1 = x0 + extent, y0 + extent
    if name == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    elif name == "square":
        draw.rectangle((x0, y0, x1, y1), fill=colour)
    elif name == "triangle":
        draw.polygon(((x0 + extent // 2, y0), (x0, y1), (x1, y1)), fill=colour)
    elif name == "stripes":
        width = max(2, extent // 8)
        for x in range(x0, x1, 2 * width):
            draw.rectangle((x, y0, x + width - 1, y1), fill=colour)
    elif name == "cross":
        bar = max(3, extent // 4)
        mid_x, mid_y = (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle((mid_x - bar // 2, y0, mid_x + bar // 2, y1), fill=colour)
        draw.rectangle((x0, mid_y - bar // 2, x1, mid_y + bar // 2), fill=colour)
    else:
        raise ValueError(f"unknown synthetic class {name!r}")
    return image


def _stamp(per_class: int, seed: int) -> str:
    return f"per_class={per_class} seed={seed} classes={','.join(CLASSES)} v1"


def folder_for(run_dir: Path, per_class: int, seed: int) -> Path:
    """``RUN/synthetic_data``, or a folder named for the size and seed when that one
    holds another set: an earlier run's images are never rewritten in place (its
    splits still point at them until a new run commits)."""
    default = Path(run_dir) / "synthetic_data"
    stamp = default / ".edgetl-synthetic"
    if not stamp.is_file() or stamp.read_text() == _stamp(per_class, seed):
        return default  # new, unfinished (no stamp yet) or the same set
    return Path(run_dir) / f"synthetic_data_{per_class}_per_class_seed_{seed}"


def generate(root: Path, per_class: int = 100, seed: int = 0) -> List[Path]:
    """Write ``per_class`` images of each class under ``root/<class>/``.

    Even-numbered images are JPEG, odd ones PNG, so both decoders are used.
    Returns the written paths. Existing identical datasets are reused.
    """
    root = Path(root)
    stamp = root / ".edgetl-synthetic"
    expected = _stamp(per_class, seed)
    if stamp.is_file() and stamp.read_text() == expected:
        return sorted(p for p in root.rglob("*") if p.suffix in (".jpg", ".png"))
    rng = np.random.default_rng(seed)
    written = []
    for name in CLASSES:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            image = draw_example(name, rng)
            suffix = ".jpg" if index % 2 == 0 else ".png"
            path = folder / f"{name}_{index:04d}{suffix}"
            with atomic_path(path) as tmp:
                if suffix == ".jpg":
                    image.save(tmp, format="JPEG", quality=92)
                else:
                    image.save(tmp, format="PNG")
            written.append(path)
    stamp.write_text(expected)
    return written
