"""What ``--source`` names, turned into frames: files, folders, videos, cameras.

Every source yields ``Frame``s (a name and an upright RGB Pillow image, or
the reason it could not be read). Frames are produced inside the pipeline's
decode thread, so reading the next file or video frame overlaps inference.
Video and camera frames come from OpenCV in BGR order and are converted to
RGB here (a Pi camera module comes through picamera2, already RGB); all frames
are resized later by the same ``edge.image.resize_rgb`` that training used.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, List, Optional

from edge.errors import BadInput, MissingEnvironment
from edge.image import UnreadableImage, decode_rgb, list_images
from edge.runtime import quiet_stderr

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


@dataclass
class Frame:
    name: str
    image: Any = None  # PIL.Image.Image in RGB, or None when unreadable
    problem: str = ""
    decode_ms: float = 0.0
    label: Optional[str] = None  # the class folder a labeled image sits in


@dataclass
class Source:
    kind: str  # "file", "folder", "video" or "camera"
    name: str
    paths: List[Path] = field(default_factory=list)
    device: Any = None  # camera index or video path
    backend: str = ""  # for cameras: "picamera2" (a Pi's camera module) or "opencv"

    def frames(self, size: int) -> Iterator[Frame]:
        if self.kind in ("file", "folder"):
            return file_frames(self.paths, size, Path(self.name) if self.kind == "folder" else None)
        if self.backend == "picamera2":
            return picamera_frames(self.device, self.name)
        return capture_frames(self.device, self.name, self.kind == "camera")

    def describe(self) -> str:
        if self.kind == "camera":
            return f"source: camera {self.device} via {self.backend}"
        if self.kind == "folder":
            return f"source: {self.name} ({len(self.paths)} images)"
        return f"source: {self.kind} {self.name}"


def file_frames(paths: List[Path], size: int, root: Optional[Path] = None) -> Iterator[Frame]:
    depth = len(root.parts) if root is not None else 0
    for path in paths:
        start = time.perf_counter()
        # root/<class>/… labels the image; this runs per image in the decode thread.
        parts = path.parts
        label = parts[depth] if root is not None and len(parts) > depth + 1 else None
        try:
            image = decode_rgb(path, size)
            yield Frame(str(path), image, "", (time.perf_counter() - start) * 1000.0, label)
        except UnreadableImage as error:
            yield Frame(str(path), None, str(error), (time.perf_counter() - start) * 1000.0, label)


def import_opencv():
    """OpenCV, imported only when a video, camera or window needs it (optional on a Pi)."""
    import os

    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")  # its own warnings would drown our one line
    try:
        import cv2
    except ImportError as error:
        raise MissingEnvironment(
            f"video and camera sources need OpenCV ({error}): pip install opencv-python-headless"
        ) from error
    return cv2


def capture_frames(device: Any, name: str, is_camera: bool) -> Iterator[Frame]:
    """Frames from an OpenCV capture until the video ends or the camera stops answering."""
    from PIL import Image

    cv2 = import_opencv()
    capture = cv2.VideoCapture(device)
    try:
        index = 0
        while True:
            start = time.perf_counter()
            ok, bgr = capture.read()
            if not ok:  # end of the video, or the camera was unplugged
                return
            rgb = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            yield Frame(f"{name}#{index:06d}", rgb, "", (time.perf_counter() - start) * 1000.0)
            index += 1
    finally:
        capture.release()


def _picamera2() -> Any:
    """``picamera2.Picamera2`` on a Raspberry Pi that has it (apt install python3-picamera2)."""
    try:
        from picamera2 import Picamera2
    except ImportError:
        return None
    return Picamera2


# libcamera names formats by their 32-bit words: its "BGR888" is [R, G, B] per
# pixel in a numpy array (Picamera2 manual, "Image formats"), so no swap needed.
PICAMERA_FORMAT = "BGR888"
PICAMERA_SIZE = (640, 480)


def picamera_frames(index: int, name: str) -> Iterator[Frame]:
    """Frames from a Pi camera module until it stops answering (or the caller stops)."""
    from PIL import Image

    camera = _picamera2()(index)
    try:
        config = camera.create_preview_configuration(
            main={"format": PICAMERA_FORMAT, "size": PICAMERA_SIZE}
        )
        camera.configure(config)
        camera.start()
        count = 0
        while True:
            start = time.perf_counter()
            try:
                rgb = camera.capture_array("main")
            except (RuntimeError, OSError):  # the camera was disconnected or stopped
                return
            image = Image.fromarray(rgb[:, :, :3])
            yield Frame(f"{name}#{count:06d}", image, "", (time.perf_counter() - start) * 1000.0)
            count += 1
    finally:
        with contextlib.suppress(RuntimeError, OSError):
            camera.stop()
        camera.close()


def open_source(source: str) -> Source:
    """A file is itself; a folder is every image under it, recursively, sorted;
    ``camera`` / ``camera:N`` is a camera; a video file is read frame by frame."""
    if source == "camera" or source.startswith("camera:"):
        index_text = source.partition(":")[2] or "0"
        if not index_text.isdigit():
            raise BadInput(f"--source {source}: use camera or camera:N with N a camera index")
        picamera2 = _picamera2()
        # A Pi camera module is seen by picamera2 (libcamera), not by OpenCV; a USB
        # webcam beyond the modules it lists is OpenCV's.
        if picamera2 is not None and int(index_text) < len(picamera2.global_camera_info()):
            return Source("camera", source, device=int(index_text), backend="picamera2")
        cv2 = import_opencv()
        with quiet_stderr():  # the FFMPEG backend prints a paragraph when no camera exists
            probe = cv2.VideoCapture(int(index_text))
            opened = probe.isOpened()
            probe.release()
        if not opened:
            raise MissingEnvironment(
                f"--source {source}: no camera {index_text} found; "
                "check the cable and `ls /dev/video*`, or pass camera:N"
            )
        return Source("camera", source, device=int(index_text), backend="opencv")
    path = Path(source)
    if path.is_dir():
        images = list_images(path)
        if not images:
            raise BadInput(f"{source}: folder holds no images (.jpg, .png, …)")
        return Source("folder", str(path), images)
    if path.is_file():
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            cv2 = import_opencv()
            probe = cv2.VideoCapture(str(path))
            opened = probe.isOpened()
            probe.release()
            if not opened:
                raise BadInput(f"--source {source}: OpenCV cannot open this video")
            return Source("video", str(path), device=str(path))
        # Any other file: the decoder, not the extension, decides (and names the problem).
        return Source("file", str(path), [path])
    raise BadInput(f"--source {source}: no such file or folder")


def resolve_source(source: str) -> List[Path]:
    """Image files only (bench and tools that need a finite list of files)."""
    opened = open_source(source)
    if opened.kind not in ("file", "folder"):
        raise BadInput(f"--source {source}: give an image file or a folder here")
    return opened.paths
