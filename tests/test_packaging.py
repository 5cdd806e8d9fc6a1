"""The wheel holds the product only: ``toolchain/`` and ``edge/``, never the development
tools in ``tests/tools/`` (``make bench``, the demo summary) or the tests themselves.

The wheel is really built (hatchling, a few seconds, no TensorFlow, no network when
hatchling is installed or a package index is configured), so what is checked is
what ``pip install`` would put on a device.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Iterator, List

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("toolchain", "edge")
DEV_TOOLS = {path.stem for path in (REPO / "tests" / "tools").glob("*.py")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Iterator[zipfile.ZipFile]:
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out)]
    # Without hatchling in this venv pip fetches it into an isolated build environment.
    have_hatchling = importlib.util.find_spec("hatchling") is not None
    if have_hatchling:
        command.append("--no-build-isolation")
    done = subprocess.run(
        [*command, str(REPO)], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    if done.returncode != 0 and not have_hatchling and "hatchling" in done.stderr:
        pytest.skip(f"hatchling is neither installed nor reachable: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr[-2000:]
    (built,) = out.glob("edgetl-*.whl")
    with zipfile.ZipFile(built) as archive:
        yield archive


def product_files(wheel: zipfile.ZipFile) -> List[str]:
    return [name for name in wheel.namelist() if ".dist-info/" not in name]


def test_wheel_holds_only_toolchain_and_edge(wheel):
    names = product_files(wheel)
    assert names, "the wheel holds no modules"
    outside = [name for name in names if name.split("/", 1)[0] not in PACKAGES]
    assert outside == []
    assert {name.split("/", 1)[0] for name in names} == set(PACKAGES)


def test_no_development_tool_in_the_wheel(wheel):
    stems = {Path(name).stem for name in product_files(wheel)}
    assert DEV_TOOLS, "tests/tools/ holds the development tools this test keeps out"
    assert stems & (DEV_TOOLS | {"benchmark", "summary", "conftest"}) == set()
    assert not any(Path(name).name.startswith("test_") for name in product_files(wheel))


def test_wheel_modules_import_no_development_tool(wheel):
    for name in product_files(wheel):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(wheel.read(name).decode("utf-8"), filename=name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported = [node.module]
            else:
                continue
            for module in imported:
                top = module.split(".")[0]
                assert top not in DEV_TOOLS | {"tests"}, f"{name} imports {module}"
                assert module not in ("toolchain.benchmark", "toolchain.summary"), name


def test_console_script_target_is_in_the_wheel(wheel):
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    target = text.split("edgetl = ", 1)[1].split(":", 1)[0].strip()
    assert target.replace(".", "/") + ".py" in wheel.namelist()


def test_wheel_holds_every_package_source(wheel):
    """Nothing of the product is lost on the way: every ``.py`` git knows under the
    packages (tracked, or new and not ignored) is in the wheel, and so are the phone
    page's files (``edgetl serve`` hands them out)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", *PACKAGES],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    sources = {
        path
        for path in listed.stdout.splitlines()
        if path.endswith((".py", ".html", ".js")) and (REPO / path).is_file()
    }
    assert {"edge/web/page/index.html", "edge/web/page/app.js"} <= sources
    assert sources <= set(wheel.namelist())
