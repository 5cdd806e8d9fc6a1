"""Turn ``--source`` into the image files to classify."""

from __future__ import annotations

from pathlib import Path
from typing import List

from edge.errors import BadInput, MissingEnvironment
from edge.image import is_image_name, list_images


def resolve_source(source: str) -> List[Path]:
    """A file is itself; a folder is every image under it, recursively, sorted.

    Cameras and video files are named here so the user gets a clear answer
    instead of "no such file".
    """
    if source == "camera" or source.startswith("camera:"):
        raise MissingEnvironment(
            f"--source {source}: camera input needs OpenCV and is not available in this build; "
            "classify a file or a folder of images"
        )
    path = Path(source)
    if path.is_dir():
        images = list_images(path)
        if not images:
            raise BadInput(f"{source}: folder holds no images ({', '.join(('.jpg', '.png'))} …)")
        return images
    if path.is_file():
        if path.suffix.lower() in (".mp4", ".avi", ".mov", ".mkv"):
            raise MissingEnvironment(
                f"--source {source}: video input needs OpenCV and is not available in this "
                "build; extract frames to a folder and classify that"
            )
        if not is_image_name(path.name):
            # Still try it: the decoder, not the extension, decides (and names the problem).
            return [path]
        return [path]
    raise BadInput(f"--source {source}: no such file or folder")
