"""Is ``make pi-check``'s build folder safe for root to write in and delete from?

``make pi-check`` runs as root (debootstrap, chroot, mount) inside a checkout the
user owns. Root follows symbolic links like anyone: a link the user planted at
``build/pi-check`` (or at ``build``), or inside it (``commands.log ->
/etc/shadow``, ``rootfs-arm64 -> /``), would turn root's writes and its
``rm -rf`` into writes and deletions anywhere. So before anything is removed or
written:

- no component of the folder's path is a symbolic link;
- the folder is owned by root and not writable by group or others, so no one
  else can plant a link in it after this check;
- nothing in it is a symbolic link, and every folder in it is root's and not
  group/world-writable. Inside the Debian root file systems (``rootfs-*``),
  whose own links are relative to their root (``/bin -> usr/bin``, a venv's
  ``bin/python``) and only followed inside the chroot, only the paths the host
  side writes, removes or mounts over are checked (``entries``).

Pure functions over ``os.lstat``; the caller prints the one line and exits 2.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator, List

# Inside a root file system, what the host writes, copies into or mounts over.
ROOTFS_HOST_PATHS = ("proc", "sys", "dev", "etc", "opt")
CHECK_FOLDER = "edgetl-check"  # under /opt: the check's files, written by the host
VENV_MARKER = ".edgetl-installed"  # the host writes it into each venv under /opt


class UnsafeFolder(Exception):
    """The build folder could let root write or delete outside it (exit 2)."""


def components(folder: Path) -> List[Path]:
    """``folder`` made absolute without resolving links, and each of its ancestors."""
    absolute = Path(os.path.abspath(folder))
    return [*reversed(absolute.parents), absolute]


def check_no_links_on_path(folder: Path) -> None:
    """No component of ``folder``'s path is a symbolic link (those that exist)."""
    for part in components(folder):
        if part.is_symlink():
            raise UnsafeFolder(
                f"{part} is a symbolic link (to {os.readlink(part)}), and make pi-check runs "
                f"as root: give --out a path without links, e.g. {part.resolve()}"
            )


def check_owner_and_mode(path: Path) -> None:
    """``path`` is root's and no one else can write to it."""
    info = os.lstat(path)
    if info.st_uid != 0:
        raise UnsafeFolder(
            f"{path} is owned by uid {info.st_uid}, not root, and make pi-check runs as root: "
            f"`chown -R root: {path}` or remove it"
        )
    if stat.S_IMODE(info.st_mode) & 0o022:
        raise UnsafeFolder(
            f"{path} is writable by group or others (mode {stat.S_IMODE(info.st_mode):o}), "
            f"and make pi-check runs as root: `chmod go-w {path}`"
        )


def entries(folder: Path) -> Iterator[Path]:
    """Everything under ``folder``, links never followed; in a root file system only
    what the host side touches: its top-level mount points, ``/opt``'s entries (the
    venvs are removed and marked by the host; their own links, made by ``venv`` in
    the chroot, are not walked) and all of ``/opt/edgetl-check``."""
    for top, folders, files in os.walk(folder, followlinks=False):
        here = Path(top)
        inner = here.relative_to(folder).parts
        names = folders + files
        if inner and inner[0].startswith("rootfs-"):
            if len(inner) == 1:
                names = [name for name in names if name in ROOTFS_HOST_PATHS]
                folders[:] = [name for name in folders if name == "opt"]
            elif inner[1:] == ("opt",):
                venvs = [name for name in folders if name != CHECK_FOLDER]
                names += [f"{venv}/{VENV_MARKER}" for venv in venvs]
                folders[:] = [name for name in folders if name == CHECK_FOLDER]
        for name in names:
            if os.path.lexists(here / name):
                yield here / name


def check_inside(folder: Path) -> None:
    """No symbolic link under ``folder`` (as ``entries`` walks it); every folder root's
    and not writable by others."""
    for path in entries(folder):
        if path.is_symlink():
            raise UnsafeFolder(
                f"{path} is a symbolic link (to {os.readlink(path)}) inside the build folder, "
                f"and make pi-check runs as root: remove it (`rm {path}`)"
            )
        if path.is_dir():
            check_owner_and_mode(path)


def safe_build_folder(folder: Path) -> Path:
    """Make ``folder`` (root's, mode 755) if it is missing, check it as the module
    docstring says, and return its absolute path; ``UnsafeFolder`` when it is not safe."""
    check_no_links_on_path(folder)
    absolute = components(folder)[-1]
    if not absolute.exists():
        absolute.mkdir(parents=True, mode=0o755)
        os.chmod(absolute, 0o755)  # mkdir's mode passes through the umask
        check_no_links_on_path(absolute)  # nothing was swapped in while it was made
    if not absolute.is_dir():
        raise UnsafeFolder(f"{absolute} is not a folder: give --out a folder")
    check_owner_and_mode(absolute)
    check_inside(absolute)
    return absolute
