"""A wrong --output is a configuration error found before the join: exit 2, one paragraph naming the path and
the cause, nothing written. Each case is the fault itself: a real file, a real read-only mount, a folder the
process may not write (root's override capability dropped), a bucket that does not exist."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from linreg.config import make_config
from linreg.errors import EXIT_BAD_INPUT, InputError
from linreg.pipeline import steps
from tests.conftest import REPO


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def run_fails(sample_paths, output, *patterns):
    with pytest.raises(InputError) as info:
        steps.run(make_config(**sample_paths, output=str(output), run_id="probe"))
    message = str(info.value)
    for pattern in patterns:
        assert pattern in message, (pattern, message)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_output_that_is_a_file(sample_paths, tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("not a folder")
    before = tree(tmp_path)
    run_fails(sample_paths, target, repr(str(target)), "it is a file, not a folder")
    assert tree(tmp_path) == before


def test_output_below_a_file(sample_paths, tmp_path):
    (tmp_path / "file").write_text("x")
    before = tree(tmp_path)
    run_fails(sample_paths, tmp_path / "file" / "out", str(tmp_path / "file"), "is a file, not a folder")
    assert tree(tmp_path) == before


def test_output_on_a_read_only_file_system(sample_paths, tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs as root and must be able to mount a read-only tmpfs: {result.stderr!r}")
        pytest.skip("mounting a read-only file system needs root")
    try:
        run_fails(sample_paths, mount / "out", "read-only file system")
        assert list(mount.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_the_command_line_on_an_unwritable_folder_exits_2_without_a_traceback(tmp_path):
    """The whole command, as a process that may not write the folder (for root: without CAP_DAC_OVERRIDE)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot drop the permission override")
        prefix = [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--"]
    data = tmp_path / "data"
    shutil.copytree(REPO / "data" / "sample", data)
    result = subprocess.run(prefix + [sys.executable, "-m", "flows.train", "--weather", str(data / "weather.parquet"),
                                      "--yields", str(data / "yields.parquet"), "--output", str(locked / "out")],
                            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                            timeout=300)
    os.chmod(locked, 0o755)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "not writable (permission denied)" in errors[0] and str(locked) in errors[0]
    assert list(locked.iterdir()) == []


def test_output_in_a_bucket_that_does_not_exist(sample_paths, s3_server):
    output = f"s3://no-such-bucket-4f1c/out?endpoint_override={s3_server.split('://')[1]}&scheme=http"
    run_fails(sample_paths, output, "no-such-bucket-4f1c", "does not exist")
    import boto3

    names = [b["Name"] for b in boto3.client("s3", endpoint_url=s3_server).list_buckets()["Buckets"]]
    assert "no-such-bucket-4f1c" not in names


def test_a_good_output_leaves_no_probe_behind(sample_paths, tmp_path):
    steps.run(make_config(**sample_paths, output=str(tmp_path / "new" / "out"), run_id="fine"))
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".linreg-probe-")]
    assert leftovers == [] and (tmp_path / "new" / "out" / "runs").is_dir()


def test_the_cause_quoted_from_pyarrow_names_no_credential():
    """pyarrow's message repeats the URI it was given (the real one): the cause is redacted as the output is."""
    from linreg.outputs import destination

    with pytest.raises(InputError) as info:
        destination.check_writable("bogus://KEY:SECRET@host/out")
    message = str(info.value)
    assert "SECRET" not in message and "Unrecognized filesystem type in URI: bogus://***@host/out" in message
