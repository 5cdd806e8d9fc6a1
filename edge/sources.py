"""What ``--source`` names, turned into frames: files, folders, videos, cameras.

Every source yields ``Frame``s (a name and an upright RGB Pillow image, or
the reason it could not be read). Frames are produced inside the pipeline's
decode thread, so reading the next file or video frame overlaps inference.
Video and camera frames come from OpenCV in BGR order and are converted to
RGB here (a Pi camera module comes through picamera2, already RGB); all frames
are resized later by the same ``edge.image.resize_rgb`` that training used.
The AI Camera's frames (``sensor_frames``) arrive with the scores its sensor
computed, and are not resized: the sensor crops and scales for itself.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import numpy as np

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
    scores: Optional[np.ndarray] = None  # the AI Camera: its sensor already ran the network
    sensor_ms: float = 0.0  # ... and took this long, as the sensor reports it


@dataclass
class Source:
    kind: str  # "file", "folder", "video" or "camera"
    name: str
    paths: List[Path] = field(default_factory=list)
    device: Any = None  # camera index or video path
    backend: str = ""  # cameras: "picamera2" (a Pi's camera module), "imx500" or "opencv"
    network: Optional[Path] = None  # the AI Camera (backend "imx500"): the .rpk its sensor runs

    def frames(self, size: int, stop_requested: Callable[[], str] = lambda: "") -> Iterator[Frame]:
        """``stop_requested`` is asked where a source can wait long without a frame."""
        if self.kind in ("file", "folder"):
            return file_frames(self.paths, size, Path(self.name) if self.kind == "folder" else None)
        if self.backend == "imx500":
            return sensor_frames(self.network, self.name, stop_requested)
        if self.backend == "picamera2":
            return picamera_frames(self.device, self.name)
        return capture_frames(self.device, self.name, self.kind == "camera")

    def describe(self) -> str:
        if self.backend == "imx500":
            return "source: the AI Camera (IMX500) via picamera2"
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


def camera_busy(error: BaseException) -> MissingEnvironment:
    """A Pi camera that libcamera would not open or start (another program holds it)."""
    return MissingEnvironment(
        f"the camera could not be started ({error}); close other camera programs "
        "(rpicam-*, libcamera apps) and check `rpicam-hello --list-cameras`"
    )


@contextlib.contextmanager
def started_camera(open_camera: Callable[[], Any], start: Callable[[Any], None]) -> Iterator[Any]:
    """A picamera2 camera opened and started, stopped and closed however the frames end;
    a camera that will not open or start is ``camera_busy``'s one line."""
    try:
        camera = open_camera()
    except (RuntimeError, OSError) as error:
        raise camera_busy(error) from error
    try:
        try:
            start(camera)
        except (RuntimeError, OSError) as error:
            raise camera_busy(error) from error
        yield camera
    finally:
        with contextlib.suppress(RuntimeError, OSError):
            camera.stop()
        camera.close()


def picamera_frames(index: int, name: str) -> Iterator[Frame]:
    """Frames from a Pi camera module until it stops answering (or the caller stops)."""
    from PIL import Image

    def configure(camera: Any) -> None:
        camera.configure(
            camera.create_preview_configuration(
                main={"format": PICAMERA_FORMAT, "size": PICAMERA_SIZE}
            )
        )
        camera.start()

    with started_camera(lambda: _picamera2()(index), configure) as camera:
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


# A sensor that has not produced an output tensor by then never will: a first upload
# of the network to the sensor can take a minute or more.
MAX_SECONDS_WITHOUT_OUTPUT = 300.0
IMX500_INSTALL = "sudo apt install imx500-all python3-picamera2"


def _imx500_helper() -> Any:
    """``picamera2.devices.IMX500``, on a Pi with the AI Camera stack installed."""
    try:
        from picamera2 import Picamera2
        from picamera2.devices import IMX500
    except ImportError as error:
        raise MissingEnvironment(
            f"the AI Camera needs picamera2 with its IMX500 helper ({error}): {IMX500_INSTALL}"
        ) from error
    return Picamera2, IMX500


def sensor_frames(
    network: Path, name: str, stop_requested: Callable[[], str] = lambda: ""
) -> Iterator[Frame]:
    """Frames from the AI Camera, each with the scores its sensor computed for it.

    As Picamera2's own classification example does: the IMX500 helper is made
    first (it uploads the network to the sensor), then the camera it names.
    Frames before the sensor's first output (the upload, which can take a minute
    on a first load) are passed over, asking ``stop_requested`` between them, so
    Ctrl-C ends the wait; a camera that stops answering ends the stream, as a
    camera module does. Picamera2's upload progress bar is not used: it forks a
    process that outlives a session ended early.
    """
    from PIL import Image

    picamera2, imx500_class = _imx500_helper()
    try:
        imx500 = imx500_class(str(network.resolve()))
    except (RuntimeError, OSError) as error:  # no AI Camera, or it refused the network
        raise MissingEnvironment(
            f"{network}: the AI Camera did not take it ({error}); check the camera cable, "
            f"`rpicam-hello --list-cameras`, and that this is imx500-package's output"
        ) from error
    except Exception as error:  # picamera2 could not parse the file
        raise BadInput(
            f"{network}: not a network the AI Camera can load ({type(error).__name__}: "
            f"{error}); give the network.rpk that imx500-package wrote"
        ) from error

    def configure(camera: Any) -> None:
        camera.start(
            camera.create_preview_configuration(
                main={"format": PICAMERA_FORMAT, "size": PICAMERA_SIZE}, buffer_count=12
            )
        )

    with started_camera(lambda: picamera2(imx500.camera_num), configure) as camera:
        count, waiting_since = 0, time.monotonic()
        while not stop_requested():
            start = time.perf_counter()
            try:
                request = camera.capture_request()
            except (RuntimeError, OSError):  # the camera was disconnected or stopped
                return
            try:
                rgb = request.make_array("main")
                metadata = request.get_metadata()
            finally:
                request.release()
            outputs = imx500.get_outputs(metadata)
            if not outputs:
                waited = time.monotonic() - waiting_since
                if waited > MAX_SECONDS_WITHOUT_OUTPUT:
                    raise BadInput(
                        f"{network}: the sensor gave no output in {waited:.0f} s of frames; is "
                        "this the network.rpk imx500-package wrote for this camera?"
                    )
                continue
            waiting_since = time.monotonic()
            kpi = imx500.get_kpi_info(metadata)
            yield Frame(
                f"{name}#{count:06d}",
                Image.fromarray(np.asarray(rgb)[:, :, :3]),
                "",
                (time.perf_counter() - start) * 1000.0,
                scores=np.asarray(outputs[0], dtype=np.float32).reshape(-1),
                sensor_ms=float(kpi[0]) if kpi else 0.0,
            )
            count += 1


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


def open_sensor_source(source: str, network: Path) -> Source:
    """The AI Camera as ``--source camera``: Picamera2's helper finds the camera itself."""
    if source != "camera":
        raise BadInput(
            f"--source {source}: {network.name} runs on the AI Camera's sensor, "
            "so the source is the camera itself; use --source camera"
        )
    return Source("camera", source, backend="imx500", network=network)


def resolve_source(source: str) -> List[Path]:
    """Image files only (bench and tools that need a finite list of files)."""
    opened = open_source(source)
    if opened.kind not in ("file", "folder"):
        raise BadInput(f"--source {source}: give an image file or a folder here")
    return opened.paths
