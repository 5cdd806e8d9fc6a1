"""``make pi-check``: edgetl on a Raspberry Pi's own CPU, emulated, against the workstation.

A development tool, not part of the wheel. INT8 kernels are where CPU
architectures differ, so "parity on x86" is not yet parity on a Pi. This check:

1. builds (once, cached under ``OUT/rootfs-*``) Debian Bookworm root file systems
   for arm64 (64-bit Raspberry Pi OS) and armhf (32-bit Raspberry Pi OS) with
   ``debootstrap``, run through QEMU user-mode emulation (``qemu-user-static``,
   binfmt_misc), with a Pi-like ``/proc/cpuinfo`` bind-mounted over the host's;
2. installs edgetl there exactly as the README tells a Pi user, from the wheel
   built here: ``edgetl[edge]`` and ``edgetl[edge-legacy]`` on 64-bit; Debian's
   ``python3-numpy`` / ``python3-pil`` in a ``--system-site-packages`` venv plus
   ``edgetl[edge-legacy]`` on 32-bit (no armv7l wheels for numpy, Pillow or
   ai-edge-litert exist);
3. trains the README's recipe on ``flowers128`` with the shared 0.35 weights
   (a generated set without ``../shared``), exports it with the default budget and
   validates the shipped INT8 model, which leaves ``parity_reference.json``;
4. on each target and runtime runs ``edgetl info``, ``edgetl classify
   --data-labels`` and the device-side ``edgetl parity`` on the test split's
   photos, and compares every image's scores with the same runtime on x86.

QEMU's default CPU model gives wrong INT8 results with ai-edge-litert, so each
target runs with a Pi's core (``QEMU_CPU``): cortex-a72 (Pi 4) on arm64, and
cortex-a15 on armhf (QEMU's 32-bit emulator has no Pi core; a15 has the same
NEON/VFPv4 features a Pi runs armhf code with). Emulation proves results, never
speed.

Writes ``OUT/report.json`` and ``OUT/report.md``. Exit 0 when every target ran
and ai-edge-litert on arm64 computed what x86 computes (the claim the README
makes: the same top-1 on every image and scores at most one output step, 1/256,
apart); 1 when it did not; 2 when the build folder is unsafe for root (a
symbolic link on its path or in it, or a folder someone else owns or can write:
``pi_check_safety``); 3 when root or Debian's tools are missing; 4 when a step
failed (its error is printed).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Dict, Iterator, List, Sequence, Tuple

import typer

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_speed import machine  # noqa: E402
from pi_check_safety import UnsafeFolder, safe_build_folder  # noqa: E402
from recipe import RECIPE_FLAGS, WEIGHTS_FILE  # noqa: E402

from edge import atomic  # noqa: E402

DEFAULT_SHARED = REPO.parent / "shared"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
HOST_TOOLS = {  # command -> Debian package
    "debootstrap": "debootstrap",
    "qemu-aarch64-static": "qemu-user-static",
    "qemu-arm-static": "qemu-user-static",
    "update-binfmts": "binfmt-support",
    "chroot": "coreutils",
    "mount": "mount",
}
# Bumped when what goes into a root file system changes, so a cached one is rebuilt.
ROOTFS_RECIPE = "1"
CHECK_DIR = "/opt/edgetl-check"  # inside each root file system
COMMAND_TIMEOUT = 3600  # seconds; emulated pip and classification are slow, never endless

PI4_CPUINFO_64 = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n"
    "CPU revision\t: 3\n\n"
    for i in range(4)
) + ("Hardware\t: BCM2835\nRevision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n")
PI5_CPUINFO_64 = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 "
    "crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\n"
    "CPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n"
    for i in range(4)
) + ("Revision\t: c04170\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n")
PI4_CPUINFO_32 = "".join(
    f"processor\t: {i}\nmodel name\t: ARMv7 Processor rev 3 (v7l)\nBogoMIPS\t: 108.00\n"
    "Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae "
    "evtstrm crc32\nCPU implementer\t: 0x41\nCPU architecture: 7\nCPU variant\t: 0x0\n"
    "CPU part\t: 0xd08\nCPU revision\t: 3\n\n"
    for i in range(4)
) + ("Hardware\t: BCM2711\nRevision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n")


@dataclass(frozen=True)
class Venv:
    runtime: str  # edgetl's runtime name
    path: str  # inside the root file system
    extra: str  # the edgetl extra a Pi user installs
    system_site_packages: bool = False


@dataclass(frozen=True)
class Target:
    board: str  # the Pi it stands for
    arch: str  # what `uname -m` says on the Pi
    debian: str  # Debian's architecture name
    binfmt: str  # update-binfmts entry
    qemu_cpu: str
    cpuinfo: str
    packages: Tuple[str, ...]  # Debian packages beyond python3
    venvs: Tuple[Venv, ...]


TARGETS = (
    Target(
        "Pi 4, 64-bit OS",
        "aarch64",
        "arm64",
        "qemu-aarch64",
        "cortex-a72",
        PI4_CPUINFO_64,
        (),
        (
            Venv("ai_edge_litert", "/opt/edgetl-edge", "edge"),
            Venv("tflite_runtime", "/opt/edgetl-legacy", "edge-legacy"),
        ),
    ),
    # Pi 5's core has the dot-product instructions, so XNNPACK takes other INT8 kernels.
    Target(
        "Pi 5, 64-bit OS",
        "aarch64",
        "arm64",
        "qemu-aarch64",
        "cortex-a76",
        PI5_CPUINFO_64,
        (),
        (Venv("ai_edge_litert", "/opt/edgetl-edge", "edge"),),
    ),
    Target(
        "Pi 4, 32-bit OS",
        "armv7l",
        "armhf",
        "qemu-arm",
        "cortex-a15",
        PI4_CPUINFO_32,
        ("python3-numpy", "python3-pil"),
        (Venv("tflite_runtime", "/opt/edgetl-legacy", "edge-legacy", system_site_packages=True),),
    ),
)
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")


class Missing(Exception):
    """Root, a Debian tool or binfmt_misc is not there: exit 3."""


def log(message: str) -> None:
    print(f"pi-check: {message}", file=sys.stderr, flush=True)


def run(
    command: Sequence[str], timeout: int = COMMAND_TIMEOUT, **kwargs
) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, **kwargs)


def checked(command: Sequence[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    result = run(command, **kwargs)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-15:]
        raise RuntimeError(f"{what} failed (exit {result.returncode}):\n" + "\n".join(tail))
    return result


# --- the host: root, tools, binfmt_misc ---------------------------------------------


def ensure_host() -> None:
    """Root and Debian's tools, installed with apt when root has it; else Missing."""
    if os.geteuid() != 0:
        raise Missing("make pi-check needs root (debootstrap, chroot and mount); run it as root")
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if missing and shutil.which("apt-get"):
        log(f"installing {' '.join(missing)} with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "install", "-y", *missing], env=env)
        missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise Missing(
            f"Debian packages {' '.join(missing)} are missing and could not be installed; "
            f"run `apt-get install {' '.join(missing)}`"
        )
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)])
    for target in TARGETS:
        if not (binfmt / target.binfmt).exists():
            run(["update-binfmts", "--enable", target.binfmt])
        if not (binfmt / target.binfmt).exists():
            raise Missing(
                f"binfmt_misc has no {target.binfmt} entry, so {target.arch} programs cannot run; "
                f"run `mount -t binfmt_misc binfmt_misc {binfmt}` and "
                f"`update-binfmts --enable {target.binfmt}` (a container may forbid both)"
            )


# --- root file systems ---------------------------------------------------------------


def mount_point(field: str) -> str:
    """/proc/mounts escapes space, tab, newline and backslash as octal ``\\NNN``."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(root: Path) -> List[str]:
    prefix = str(root.resolve()) + "/"
    found = []
    for line in Path("/proc/mounts").read_text().splitlines():
        point = mount_point(line.split()[1])
        if point.startswith(prefix) or point == prefix[:-1]:
            found.append(point)
    return found


def unmount_all(root: Path) -> None:
    for point in sorted(mounts_under(root), key=len, reverse=True):
        if run(["umount", point]).returncode != 0:
            run(["umount", "-l", point])


def remove_rootfs(root: Path) -> None:
    """Delete a root file system, never through a mount: the chroot's /dev is the host's."""
    unmount_all(root)
    left = mounts_under(root)
    if left:
        raise RuntimeError(f"{root}: still mounted at {left[0]}; unmount it before deleting")
    # --one-file-system: even a mount made after the check above is never walked into.
    checked(["rm", "-rf", "--one-file-system", str(root)], f"removing {root}")


@contextmanager
def mounted(root: Path, target: Target) -> Iterator[None]:
    """/proc, /sys, /dev and the Pi's cpuinfo inside the root, unmounted whatever happens."""
    cpuinfo = root / CHECK_DIR.lstrip("/") / "cpuinfo"
    cpuinfo.parent.mkdir(parents=True, exist_ok=True)
    cpuinfo.write_text(target.cpuinfo)
    try:
        checked(["mount", "-t", "proc", "proc", str(root / "proc")], "mount /proc")
        checked(["mount", "-t", "sysfs", "sysfs", str(root / "sys")], "mount /sys")
        checked(["mount", "--bind", "/dev", str(root / "dev")], "mount /dev")
        checked(["mount", "--bind", str(cpuinfo), str(root / "proc/cpuinfo")], "mount cpuinfo")
        yield
    finally:
        unmount_all(root)


def in_root(root: Path, target: Target, command: Sequence[str], timeout: int = COMMAND_TIMEOUT):
    """``command`` inside the root file system, under emulation with a Pi's CPU model."""
    env = [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME=/root",
        "LANG=C.UTF-8",
        f"QEMU_CPU={target.qemu_cpu}",
        f"PIP_CERT={CHECK_DIR}/ca-certificates.crt",
        "PIP_DISABLE_PIP_VERSION_CHECK=1",
        "PIP_DEFAULT_TIMEOUT=180",
        "PIP_ROOT_USER_ACTION=ignore",
    ]
    return run(["chroot", str(root), "/usr/bin/env", "-i", *env, *command], timeout=timeout)


def in_root_checked(root: Path, target: Target, command: Sequence[str], what: str):
    result = in_root(root, target, command)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-15:]
        raise RuntimeError(
            f"{target.arch}: {what} failed (exit {result.returncode}):\n" + "\n".join(tail)
        )
    return result


def rootfs(out: Path, target: Target) -> Path:
    """The cached root file system of ``target``; built when absent or from an older recipe."""
    root = out / f"rootfs-{target.debian}"
    marker = root / ".edgetl-pi-check"
    recipe = f"{ROOTFS_RECIPE} {SUITE} {' '.join(BASE_PACKAGES + target.packages)}"
    if marker.is_file() and marker.read_text() == recipe:
        return root
    if root.exists():
        log(f"{target.arch}: removing an incomplete or outdated {root}")
        remove_rootfs(root)
    log(f"{target.arch}: debootstrap {SUITE} {target.debian} into {root} (a few minutes, once)")
    start = time.perf_counter()
    checked(
        [
            "debootstrap",
            f"--arch={target.debian}",
            "--variant=minbase",
            "--include=" + ",".join(BASE_PACKAGES + target.packages),
            SUITE,
            str(root),
            MIRROR,
        ],
        f"debootstrap {target.debian}",
    )
    marker.write_text(recipe)
    log(f"{target.arch}: root file system ready in {time.perf_counter() - start:.0f}s")
    return root


def install_edgetl(root: Path, target: Target, wheel: Path) -> Dict[str, str]:
    """Each venv as the README tells a Pi user, then this tree's wheel over it."""
    check = root / CHECK_DIR.lstrip("/")
    shutil.copy2("/etc/ssl/certs/ca-certificates.crt", check / "ca-certificates.crt")
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink():  # an absolute link would point the copy at the host's own file
        resolv.unlink()
    shutil.copy2("/etc/resolv.conf", resolv)
    shutil.copy2(wheel, check / wheel.name)
    inside = f"{CHECK_DIR}/{wheel.name}"
    seconds = {}
    for venv in target.venvs:
        start = time.perf_counter()
        marker = root / venv.path.lstrip("/") / ".edgetl-installed"
        if not marker.is_file():
            if (root / venv.path.lstrip("/")).exists():
                shutil.rmtree(root / venv.path.lstrip("/"))
            create = ["python3", "-m", "venv", venv.path]
            if venv.system_site_packages:
                create.insert(3, "--system-site-packages")
            in_root_checked(root, target, create, f"creating {venv.path}")
            log(f"{target.arch}: pip install 'edgetl[{venv.extra}]' in {venv.path} (emulated)")
            in_root_checked(
                root,
                target,
                [f"{venv.path}/bin/pip", "install", f"{inside}[{venv.extra}]"],
                f"pip install edgetl[{venv.extra}]",
            )
            marker.write_text(venv.extra)
        in_root_checked(
            root,
            target,
            [f"{venv.path}/bin/pip", "install", "--force-reinstall", "--no-deps", inside],
            "pip install of this tree's wheel",
        )
        seconds[venv.runtime] = round(time.perf_counter() - start, 1)
    return seconds


# --- the model and the images, made here ---------------------------------------------


def edgetl(python: Path, *args: str, log_file: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = run([str(python), "-m", "toolchain.cli", *args], env=env, cwd=REPO)
    with log_file.open("a") as handle:
        handle.write(f"$ edgetl {' '.join(args)}\n-> exit {result.returncode}\n")
        handle.write(result.stderr[-20000:] + "\n")
    return result


def prepare_run(
    out: Path, shared: Path, python: Path, log_file: Path
) -> Tuple[Path, Dict[str, Path], str]:
    """Train and export (once), validate: the run and its models by role.

    ``shipped`` is what the default export ships (a mix of INT8 and float ops when
    full INT8 misses the budget); ``full_int8`` is every op INT8, the file whose
    kernels differ most between CPU architectures.
    """
    photos, weights = shared / "data" / "flowers128", shared / "weights" / WEIGHTS_FILE
    run_dir = out / "run"
    if photos.is_dir() and weights.is_file():
        train = ["--data", str(photos), "--weights", str(weights), *RECIPE_FLAGS]
        data = f"flowers128 photos, alpha 0.35 ImageNet weights, 128 px ({photos})"
    else:
        train = ["--data", "synthetic", "--weights", "none", "--alpha", "0.35"]
        train += ["--image-size", "96", "--epochs", "3", "--fine-tune-epochs", "1"]
        data = "generated images (no ../shared photos), alpha 0.35, 96 px"
    if not (run_dir / "model.keras").is_file():
        log(f"training: edgetl train {' '.join(train)}")
        result = edgetl(
            python, "train", *train, "--out", str(run_dir), "--force", log_file=log_file
        )
        if result.returncode != 0:
            raise RuntimeError(f"training failed: {result.stderr.strip().splitlines()[-1:]}")
    report = run_dir / "export_report.json"
    if not (
        report.is_file() and report.stat().st_mtime > (run_dir / "model.keras").stat().st_mtime
    ):
        log("exporting with the default budget")
        result = edgetl(python, "export", str(run_dir), "--force", log_file=log_file)
        if result.returncode != 0:
            raise RuntimeError(f"export failed: {result.stderr.strip().splitlines()[-1:]}")
    shipped = run_dir / json.loads(report.read_text())["shipped"]["int8"]
    full = run_dir / "model_int8.tflite"
    if not full.is_file():  # set aside by the export because the mix shipped
        full = run_dir / "model_int8.tflite.rejected"
    result = edgetl(python, "validate", str(run_dir), "--model", str(shipped), log_file=log_file)
    if result.returncode not in (0, 1):
        raise RuntimeError(f"validate failed: {result.stderr.strip().splitlines()[-1:]}")
    models = {"shipped": shipped}
    if full.resolve() != shipped.resolve():
        models["full_int8"] = full
    return run_dir, models, data


def copy_test_images(run_dir: Path, images: Path) -> int:
    """The run's test split, byte for byte, as ``images/<class>/<file>``."""
    splits = json.loads((run_dir / "splits.json").read_text())
    labels = json.loads((run_dir / "config.json").read_text())["labels"]
    root = Path(splits["root"])
    if not root.is_absolute():
        root = (run_dir / root).resolve()
    relative = splits.get("root_relative")
    if isinstance(relative, str) and (run_dir / relative).is_dir():
        root = (run_dir / relative).resolve()
    if images.exists():
        shutil.rmtree(images)
    for rel, label in splits["test"]:
        source = root / rel
        destination = images / labels[int(label)] / Path(rel).name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    return len(splits["test"])


# --- measuring ------------------------------------------------------------------------


def scores_of(jsonl: Path, images: str) -> Dict[str, Dict[str, Any]]:
    """Per image (path relative to the images folder): its scores by label and its label."""
    rows = {}
    for line in jsonl.read_text().splitlines():
        record = json.loads(line)
        key = os.path.relpath(record["path"], images)
        rows[key] = {
            "scores": {p["label"]: p["score"] for p in record["top_k"]},
            "label": record.get("label"),
            "error": record.get("error"),
        }
    return rows


def compare(device: Dict[str, Dict[str, Any]], x86: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Every image's top-1 and scores on the device against x86 with the same runtime.

    Scores are dequantized uint8 outputs, so differences come in steps of 1/256:
    ``step_histogram`` counts images by their largest difference in those steps.
    """
    common = sorted(
        k for k in device if k in x86 and not device[k]["error"] and not x86[k]["error"]
    )
    same_top1, correct, steps = 0, 0, []
    for key in common:
        a, b = device[key]["scores"], x86[key]["scores"]
        top_a, top_b = max(a, key=a.get), max(b, key=b.get)
        same_top1 += top_a == top_b
        correct += top_a == device[key]["label"]
        diff = max(abs(a.get(name, 0.0) - b.get(name, 0.0)) for name in set(a) | set(b))
        steps.append(int(round(diff * 256)))
    n = len(common)
    histogram = {str(k): steps.count(k) for k in sorted(set(steps))}
    return {
        "n_images": n,
        "top1_agreement_with_x86": same_top1 / n if n else None,
        "identical_outputs": bool(n) and max(steps) == 0,
        "identical_images": steps.count(0),
        "max_abs_score_diff": round(max(steps, default=0) / 256, 6),
        "step_histogram": histogram,
        "accuracy": correct / n if n else None,
        "device_only": len(device) - n,
    }


def classify_args(model: str, images: str, runtime: str, output: str) -> List[str]:
    return [
        "classify", model, "--source", images, "--data-labels", "--top-k", "99",
        "--quiet", "--runtime", runtime, "--output", output,
    ]  # fmt: skip


def x86_outputs(
    out: Path, model: Path, images: Path, reference: Path, pythons: Dict[str, Path], log_file: Path
) -> Dict[str, Tuple[Dict[str, Dict[str, Any]], Dict[str, Any]]]:
    """Per runtime on x86: each image's scores (``classify``) and the parity against Keras
    (``edgetl parity``), from the venv's installed, TensorFlow-free edgetl as on a device."""
    found = {}
    for runtime, python in pythons.items():
        output = out / f"x86-{runtime}-{model.stem}.jsonl"
        parity_json = out / f"x86-{runtime}-{model.stem}-parity.json"
        cli = python.parent / "edgetl"
        classify = run([str(cli), *classify_args(str(model), str(images), runtime, str(output))])
        parity = run(
            [str(cli), "parity", str(model), "--reference", str(reference), "--source",
             str(images), "--runtime", runtime, "--json", str(parity_json)]
        )  # fmt: skip
        with log_file.open("a") as handle:
            for name, result in (("classify", classify), ("parity", parity)):
                handle.write(f"$ x86 {runtime} {name} -> exit {result.returncode}\n")
                handle.write((result.stdout + result.stderr)[-5000:] + "\n")
        for name, result, ok in (("classify", classify, (0,)), ("parity", parity, (0, 1))):
            if result.returncode not in ok:
                raise RuntimeError(f"x86 {runtime}: {name} failed: {result.stderr.strip()[-400:]}")
        found[runtime] = (scores_of(output, str(images)), json.loads(parity_json.read_text()))
    return found


def run_one(
    root: Path, target: Target, venv: Venv, role: str, model: str, reference: str, log_file: Path
) -> Tuple[Path, Dict[str, Any], int, List[str], float]:
    """``edgetl info``, ``classify --data-labels`` and ``parity`` on the device, for one
    model and runtime: the predictions file, the parity report, its exit code, info's
    first lines and the seconds taken."""
    tag = f"{target.arch}-{target.qemu_cpu}-{venv.runtime}-{role}"
    cli, images = f"{venv.path}/bin/edgetl", f"{CHECK_DIR}/images"
    start = time.perf_counter()
    info = in_root(root, target, [cli, "info", model])
    predictions = f"{CHECK_DIR}/{tag}.jsonl"
    classify = in_root(
        root, target, [cli, *classify_args(model, images, venv.runtime, predictions)]
    )
    parity = in_root(
        root,
        target,
        [cli, "parity", model, "--reference", reference, "--source", images,
         "--runtime", venv.runtime, "--json", f"{CHECK_DIR}/{tag}-parity.json"],
    )  # fmt: skip
    seconds = time.perf_counter() - start
    with log_file.open("a") as handle:
        for name, result in (("info", info), ("classify", classify), ("parity", parity)):
            handle.write(f"$ {tag} {name} -> exit {result.returncode}\n")
            handle.write((result.stdout + result.stderr)[-5000:] + "\n")
    for name, result, ok in (
        ("info", info, (0,)),
        ("classify", classify, (0,)),
        ("parity", parity, (0, 1)),
    ):
        if result.returncode not in ok:
            raise RuntimeError(
                f"{tag}: edgetl {name} exited {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()[-400:]}"
            )
    check = root / CHECK_DIR.lstrip("/")
    device_parity = json.loads((check / f"{tag}-parity.json").read_text())
    return (
        check / f"{tag}.jsonl",
        device_parity,
        parity.returncode,
        info.stdout.splitlines()[:3],
        seconds,
    )


def check_target(
    out: Path, target: Target, wheel: Path, models: Dict[str, Path], reference: Path,
    images: Path, x86: Dict[Tuple[str, str], Dict[str, Any]], log_file: Path,
) -> List[Dict[str, Any]]:  # fmt: skip
    """Every (runtime, model) pair on one emulated Pi, compared with x86."""
    root = rootfs(out, target)
    rows = []
    with mounted(root, target):
        install_seconds = install_edgetl(root, target, wheel)
        check = root / CHECK_DIR.lstrip("/")
        if (check / "images").exists():
            shutil.rmtree(check / "images")
        shutil.copytree(images, check / "images")
        shutil.copy2(reference, check / reference.name)
        for model in models.values():
            shutil.copy2(model, check / model.name)
        python = in_root_checked(root, target, ["python3", "--version"], "python3").stdout.split()
        for venv in target.venvs:
            for role, model in models.items():
                predictions, device_parity, parity_exit, info, seconds = run_one(
                    root, target, venv, role, f"{CHECK_DIR}/{model.name}",
                    f"{CHECK_DIR}/{reference.name}", log_file,
                )  # fmt: skip
                figures = compare(
                    scores_of(predictions, f"{CHECK_DIR}/images"), x86[venv.runtime, role]
                )
                tag = f"{target.arch}-{target.qemu_cpu}-{venv.runtime}-{role}"
                atomic.write_json(out / f"{tag}-parity.json", device_parity)
                rows.append(
                    {
                        "board": target.board,
                        "arch": target.arch,
                        "runtime": device_parity["device"]["runtime"],
                        "model": role,
                        "python": python[-1],
                        "numpy": device_parity["device"]["numpy"],
                        "debian": f"{SUITE} {target.debian}",
                        "qemu_cpu": target.qemu_cpu,
                        **figures,
                        "keras_agreement": device_parity["agreement"],
                        "top1_drop_pts": round(device_parity["top1_drop_pts"], 3),
                        "parity_images": device_parity["n_images"],
                        "parity_gate": device_parity["gate"],
                        "parity_exit": parity_exit,
                        "info": info,
                        "seconds": {
                            "install": install_seconds[venv.runtime],
                            "info_classify_parity": round(seconds, 1),
                        },
                    }
                )
                log(
                    f"{tag}: {figures['n_images']} images, top-1 agreement with x86 "
                    f"{figures['top1_agreement_with_x86']:.4f}, "
                    f"{figures['identical_images']}/{figures['n_images']} identical, max score diff "
                    f"{figures['max_abs_score_diff']}; "
                    f"vs Keras: agreement {device_parity['agreement']:.4f}, "
                    f"drop {device_parity['top1_drop_pts']:+.2f} pts"
                )
    return rows


def markdown(report: Dict[str, Any]) -> str:
    lines = [
        "# edgetl on a Raspberry Pi's CPU (emulated)",
        "",
        f"Models: {', '.join(f'`{role}` = {name}' for role, name in report['models'].items())} "
        f"({report['data']}); {report['n_images']} test photos; wall time "
        f"{report['wall_seconds']:.0f} s on {report['machine']['cpu']} "
        f"({report['machine']['cores']} cores).",
        "",
        "| target | runtime | model | Python | top-1 agreement with x86 (same runtime) "
        "| images with identical scores | max score diff | accuracy | agreement with Keras "
        "| top-1 drop (pts) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t in report["targets"]:
        lines.append(
            f"| {t['board']}: {t['arch']} ({t['qemu_cpu']}) | {t['runtime']} | {t['model']} | {t['python']} | "
            f"{t['top1_agreement_with_x86']:.4f} | {t['identical_images']}/{t['n_images']} | "
            f"{t['max_abs_score_diff'] * 256:.0f}/256 | {t['accuracy']:.4f} | {t['keras_agreement']:.4f} | "
            f"{t['top1_drop_pts']:+.2f} |"
        )
    lines += ["", "x86 with the same models and images:", ""]
    for key, figures in report["x86"].items():
        lines.append(
            f"- {key}: accuracy {figures['accuracy']:.4f}, agreement with Keras "
            f"{figures['keras_agreement']:.4f}, top-1 drop {figures['top1_drop_pts']:+.2f} pts"
        )
    return "\n".join(lines) + "\n"


app = typer.Typer(add_completion=False, help=__doc__.splitlines()[0])


@app.command()
def pi_check(
    out: Annotated[Path, typer.Option(help="Folder for root file systems and reports.")] = Path(
        "build/pi-check"
    ),
    shared: Annotated[
        Path, typer.Option(envvar="EDGETL_SHARED", help="Shared folder with photos and weights.")
    ] = DEFAULT_SHARED,
    edge_python: Annotated[
        Path, typer.Option(help="x86 interpreter with edgetl[edge] (ai-edge-litert).")
    ] = REPO / ".venv-edge/bin/python",
    legacy_python: Annotated[
        Path, typer.Option(help="x86 interpreter with edgetl[edge-legacy] (tflite-runtime).")
    ] = REPO / ".venv-legacy/bin/python",
    clean: Annotated[
        bool, typer.Option(help="Unmount and delete the cached root file systems, then stop.")
    ] = False,
) -> None:
    """Build the emulated Pis, install edgetl as a Pi user does, and compare with x86."""
    start = time.perf_counter()
    if os.geteuid() != 0:
        print("pi-check: error: make pi-check needs root; run it as root", file=sys.stderr)
        raise typer.Exit(3)
    try:  # before anything there is removed or written: root must not follow a link out
        out = safe_build_folder(out)
    except UnsafeFolder as error:
        print(f"pi-check: error: {error}", file=sys.stderr)
        raise typer.Exit(2) from None
    lock = open(out / ".lock", "w")  # noqa: SIM115 (held until exit: one check or clean at a time)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise RuntimeError(f"another pi-check or clean is running on {out}; wait for it") from None
    for root in sorted(out.glob("rootfs-*")):
        unmount_all(root)  # what a killed check left mounted
        if clean:
            remove_rootfs(root)
    if clean:
        if not mounts_under(out):
            checked(["rm", "-rf", "--one-file-system", str(out)], f"removing {out}")
        log(f"removed {out}")
        return
    try:
        ensure_host()
        for python in (edge_python, legacy_python):
            if not (python.parent / "edgetl").is_file():
                raise Missing(f"{python.parent / 'edgetl'} is missing; run `make setup-edge`")
    except Missing as error:
        print(f"pi-check: {error}", file=sys.stderr)
        raise typer.Exit(3) from None
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    log_file = out / "commands.log"
    log_file.write_text("")
    wheel_dir = out / "wheel"
    if wheel_dir.exists():
        shutil.rmtree(wheel_dir)
    checked(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "-w",
            str(wheel_dir),
            str(REPO),
        ],
        "building the wheel",
    )
    wheel = next(wheel_dir.glob("edgetl-*.whl"))
    run_dir, found, data = prepare_run(out, shared, Path(sys.executable), log_file)
    reference = run_dir / "parity_reference.json"
    images = out / "images"
    n_images = copy_test_images(run_dir, images)
    models_dir = out / "models"  # plain .tflite names for both roles, the same here and there
    models_dir.mkdir(exist_ok=True)
    models = {}
    for role, source in found.items():
        models[role] = models_dir / f"model_{role}.tflite"
        shutil.copy2(source, models[role])
    log(f"{n_images} test photos; models {', '.join(p.name for p in found.values())}; x86 runs")
    pythons = {"ai_edge_litert": edge_python, "tflite_runtime": legacy_python}
    x86: Dict[Tuple[str, str], Dict[str, Any]] = {}
    x86_parity: Dict[str, Dict[str, Any]] = {}
    for role, model in models.items():
        measured = x86_outputs(out, model, images, reference, pythons, log_file)
        for runtime, (rows, parity) in measured.items():
            x86[runtime, role] = rows
            x86_parity[f"{runtime} {role}"] = {
                "runtime": parity["device"]["runtime"],
                "accuracy": compare(rows, rows)["accuracy"],
                "keras_agreement": parity["agreement"],
                "top1_drop_pts": round(parity["top1_drop_pts"], 3),
            }
    targets: List[Dict[str, Any]] = []
    for target in TARGETS:
        targets += check_target(out, target, wheel, models, reference, images, x86, log_file)
    report = {
        "models": {role: source.name for role, source in found.items()},
        "models_sha256": {
            role: hashlib.sha256(model.read_bytes()).hexdigest() for role, model in models.items()
        },
        "data": data,
        "n_images": n_images,
        "machine": machine(),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "x86": x86_parity,
        "targets": targets,
    }
    atomic.write_json(out / "report.json", report)
    atomic.write_text(out / "report.md", markdown(report))
    log(f"wrote {out / 'report.json'} and report.md in {report['wall_seconds']:.0f}s")
    # The README's claim: ai-edge-litert on a 64-bit Pi decides what validate measured on
    # x86: the same top-1 on every image, scores at most one output step (1/256) apart
    # (XNNPACK's ARM kernels requantize differently: measured on a few percent of images).
    litert = [t for t in targets if t["arch"] == "aarch64" and t["runtime"].startswith("ai_edge")]
    broken = [
        t["model"]
        for t in litert
        if t["top1_agreement_with_x86"] != 1.0 or t["max_abs_score_diff"] > 1 / 256
    ]
    if not litert or broken:
        log(f"FAILED: ai-edge-litert on aarch64 differs from x86 on {broken or 'every model'}")
        raise typer.Exit(1)


def main() -> None:
    try:
        code = app(standalone_mode=False)  # click returns an Exit's code in this mode
    except KeyboardInterrupt:
        print("pi-check: interrupted; mounts were undone", file=sys.stderr)
        code = 130
    except (RuntimeError, OSError, ValueError, KeyError, subprocess.TimeoutExpired) as error:
        # a step failed: its own words, no traceback (1 means only "differs from x86")
        print(f"pi-check: FAILED: {error}", file=sys.stderr)
        code = 4
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
