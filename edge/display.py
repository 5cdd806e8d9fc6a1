"""``--show``: each frame in a window with its top classes and the FPS drawn on it.

Drawing is Pillow (``annotate``, a pure function, testable anywhere); only the
window needs OpenCV with GUI support and a display, and when either is missing
the runner says so in one line before any frame is read.
"""

from __future__ import annotations

import os
import sys
from typing import Any, List

import numpy as np
from PIL import Image, ImageDraw

from edge.errors import MissingEnvironment
from edge.sources import import_opencv

WINDOW = "edgetl"
QUIT_KEYS = (ord("q"), 27)  # q or Esc


def annotate(image: Image.Image, lines: List[str]) -> np.ndarray:
    """RGB ``uint8`` copy of ``image`` with ``lines`` on a dark band at the top left."""
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    line_height = 14
    width = min(canvas.width, 8 + 7 * max((len(line) for line in lines), default=0))
    draw.rectangle((0, 0, width, 6 + line_height * len(lines)), fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((4, 3 + line_height * i), line, fill=(255, 255, 0))
    return np.asarray(canvas)


def has_display() -> bool:
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True  # macOS and Windows always have a window system


class Window:
    """One OpenCV window; ``show`` returns False once the user closes it or presses q/Esc."""

    def __init__(self) -> None:
        if not has_display():
            raise MissingEnvironment(
                "--show needs a display and DISPLAY is not set: run on the Pi's desktop "
                "(or ssh -X), or drop --show"
            )
        self._cv2 = import_opencv()
        try:
            self._cv2.namedWindow(WINDOW, self._cv2.WINDOW_NORMAL)
        except self._cv2.error as error:
            raise MissingEnvironment(
                "--show needs OpenCV with GUI support (opencv-python-headless has none): "
                f"pip install opencv-python ({str(error).strip().splitlines()[-1]})"
            ) from None

    def show(self, rgb: np.ndarray) -> bool:
        cv2: Any = self._cv2
        cv2.imshow(WINDOW, np.ascontiguousarray(rgb[:, :, ::-1]))  # OpenCV wants BGR
        key = cv2.waitKey(1) & 0xFF
        visible = cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) >= 1
        return visible and key not in QUIT_KEYS

    def close(self) -> None:
        self._cv2.destroyAllWindows()
