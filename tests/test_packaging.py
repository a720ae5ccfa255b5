"""Packaging follows the tree: a built wheel (not only an editable install) carries every module of the
library, the tasks, the flows and the data tools, so every `python -m` command runs from a plain install."""

import shutil
import subprocess
import sys
import zipfile

from tests.conftest import REPO


def test_the_wheel_carries_every_module(tmp_path):
    had_build = (REPO / "build").exists()
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=600)
    if not had_build:  # setuptools builds in the tree: leave it as it was
        shutil.rmtree(REPO / "build", ignore_errors=True)
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("linreg_pipeline-*.whl")
    packed = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".py")}
    tree = {str(p.relative_to(REPO)) for top in ("linreg", "tasks", "flows", "datagen")
            for p in (REPO / top).rglob("*.py") if "__pycache__" not in p.parts}
    assert len(tree) > 50 and tree <= packed, sorted(tree - packed)
    assert not {n for n in packed if n.startswith(("tests/", "bench/"))}
