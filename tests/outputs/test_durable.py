"""linreg.outputs.durable: a file is replaced whole or not at all, and nothing temporary stays behind."""

import os

import pytest

from linreg.outputs import durable


def test_write_atomic_replaces_a_file_whole(tmp_path):
    target = tmp_path / "_COMMIT"
    durable.write_atomic(str(target), b"old")
    durable.write_atomic(str(target), b"new" * 100_000)
    assert target.read_bytes() == b"new" * 100_000
    assert os.listdir(tmp_path) == ["_COMMIT"]


def test_replace_fsyncs_the_new_file_before_its_rename_and_the_folder_after(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(durable, "fsync_file", lambda path: calls.append(("fsync", os.path.basename(path))))
    monkeypatch.setattr(durable, "fsync_dir", lambda path: calls.append(("fsync_dir", path)))
    real_rename = os.rename
    monkeypatch.setattr(os, "rename", lambda src, dst: (calls.append(("rename", os.path.basename(src))),
                                                        real_rename(src, dst)))
    target = tmp_path / "part-0.parquet"
    durable.replace(str(target), lambda temporary: open(temporary, "wb").write(b"rows"))
    temporary = calls[0][1]
    assert durable.is_temporary(temporary, "part-0.parquet")
    assert calls == [("fsync", temporary), ("rename", temporary), ("fsync_dir", str(tmp_path))]
    assert target.read_bytes() == b"rows"


@pytest.mark.parametrize("fails_in", ["write", "fsync"])
def test_a_failed_replace_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, monkeypatch, fails_in):
    target = tmp_path / "part-0.parquet"
    target.write_bytes(b"old")

    def write(temporary):
        with open(temporary, "wb") as f:
            f.write(b"half")
        if fails_in == "write":
            raise OSError(28, "No space left on device")

    if fails_in == "fsync":
        monkeypatch.setattr(durable, "fsync_file", lambda path: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(OSError):
        durable.replace(str(target), write)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["part-0.parquet"]
