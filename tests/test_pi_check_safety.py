"""``make pi-check`` runs as root: its build folder must give root no symbolic link to
follow out of it, and no one else may be able to plant one (tests/tools/pi_check_safety.py).

The checks are pure functions over real folders in ``tmp_path``; the tests run as
root (as the check does), so a wrong owner is made with ``os.chown``. The last test
runs pi_check.py itself on a linked folder: it refuses before the emulation starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "tools"))
from pi_check_safety import UnsafeFolder, safe_build_folder  # noqa: E402

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="pi-check runs as root; so must this")


@pytest.fixture
def secret(tmp_path) -> Path:
    """A file root must never write through a link (stands for /etc/shadow)."""
    path = tmp_path / "secret"
    path.write_text("root's file")
    return path


def refused(folder: Path, *fragments: str) -> str:
    with pytest.raises(UnsafeFolder) as caught:
        safe_build_folder(folder)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


@as_root
def test_a_missing_folder_is_made_for_root_only(tmp_path):
    out = tmp_path / "build" / "pi-check"
    assert safe_build_folder(out) == out
    info = out.stat()
    assert out.is_dir() and info.st_uid == 0 and info.st_mode & 0o777 == 0o755
    assert safe_build_folder(out) == out  # and accepted the next time


@as_root
def test_a_linked_build_folder_is_refused(tmp_path):
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o755)
    (tmp_path / "pi-check").symlink_to(real)
    refused(tmp_path / "pi-check", "symbolic link", str(real))


@as_root
def test_a_linked_component_of_the_path_is_refused(tmp_path):
    (tmp_path / "real-build").mkdir()
    (tmp_path / "build").symlink_to(tmp_path / "real-build")
    refused(tmp_path / "build" / "pi-check", f"{tmp_path / 'build'} is a symbolic link")
    assert not (tmp_path / "real-build" / "pi-check").exists()  # nothing made through it


@as_root
@pytest.mark.parametrize(
    "link",
    [
        "commands.log",  # written with write_text: would overwrite the target
        "run/export_report.json",
        "rootfs-arm64",  # removed with rm -rf, mounted into
        "rootfs-arm64/dev",  # /dev is bind-mounted over it
        "rootfs-arm64/opt/edgetl-check/cpuinfo",  # written, then mounted over /proc/cpuinfo
        "rootfs-arm64/opt/edgetl-edge",  # a venv the host removes with rmtree
        "rootfs-arm64/opt/edgetl-edge/.edgetl-installed",  # the marker the host writes
    ],
)
def test_a_link_inside_the_build_folder_is_refused_before_anything_is_written(
    tmp_path, secret, link
):
    out = tmp_path / "pi-check"
    out.mkdir(mode=0o755)
    path = out / link
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    path.symlink_to(secret)
    refused(out, str(path), "symbolic link")
    assert secret.read_text() == "root's file"


@as_root
def test_links_a_debian_root_file_system_holds_are_its_own(tmp_path):
    """``/bin -> usr/bin`` and friends are only followed inside the chroot."""
    root = tmp_path / "pi-check" / "rootfs-arm64"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "etc").mkdir()
    (root / "etc" / "resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    (root / "opt" / "edgetl-check").mkdir(parents=True)
    (root / "opt" / "edgetl-edge" / "bin").mkdir(parents=True)  # a venv made in the chroot
    (root / "opt" / "edgetl-edge" / "bin" / "python").symlink_to("/usr/bin/python3")
    (root / "opt" / "edgetl-edge" / "lib64").symlink_to("lib")
    for folder in (tmp_path / "pi-check", *root.rglob("*")):
        if folder.is_dir() and not folder.is_symlink():
            folder.chmod(0o755)
    assert safe_build_folder(tmp_path / "pi-check") == tmp_path / "pi-check"


@as_root
def test_a_folder_someone_else_owns_is_refused(tmp_path):
    out = tmp_path / "pi-check"
    out.mkdir(mode=0o755)
    os.chown(out, 1000, 1000)
    refused(out, "owned by uid 1000", "chown")
    os.chown(out, 0, 0)
    (out / "run").mkdir(mode=0o755)
    os.chown(out / "run", 1000, 1000)  # the user could plant a link in it later
    refused(out, f"{out / 'run'} is owned by uid 1000")


@as_root
@pytest.mark.parametrize("mode", [0o775, 0o757, 0o1777])
def test_a_folder_others_can_write_is_refused(tmp_path, mode):
    out = tmp_path / "pi-check"
    out.mkdir()
    out.chmod(mode)
    refused(out, "writable by group or others", "chmod go-w")


@as_root
def test_a_file_instead_of_a_folder_is_refused(tmp_path):
    (tmp_path / "pi-check").write_text("")
    refused(tmp_path / "pi-check", "not a folder")


@as_root
def test_pi_check_exits_2_in_one_line_on_a_linked_folder_and_touches_nothing(tmp_path, secret):
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o755)
    (tmp_path / "pi-check").symlink_to(real)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests/tools/pi_check.py"),
            "--out",
            str(tmp_path / "pi-check"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pi-check: error:"), result.stderr
    assert "symbolic link" in lines[0] and "Traceback" not in result.stderr
    assert os.listdir(real) == []  # no lock file, no log, nothing
