"""linreg.outputs.migrate's check at the start of a run: each runs-index entry is read once."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from linreg.errors import InputError
from linreg.inputs.schema import SCHEMA_VERSION
from linreg.outputs import commit, migrate


def _entry(out, run_id, columns, version):
    folder = out / "runs" / f"run_id={run_id}"
    folder.mkdir(parents=True)
    metadata = {migrate.VERSION_KEY: version.encode()} if version else None
    pq.write_table(pa.table(columns).replace_schema_metadata(metadata), folder / commit.PART_FILE)


@pytest.fixture
def counted(monkeypatch):
    """How often each runs entry is read: whole (commit.read_entry) and footer only (migrate.file_version)."""
    reads = []
    real_entry, real_footer = commit.read_entry, migrate.file_version
    monkeypatch.setattr(commit, "read_entry", lambda fs, path: (reads.append(("whole", path)), real_entry(fs, path))[1])
    monkeypatch.setattr(migrate, "file_version", lambda fs, path, **kw: (reads.append(("footer", path)),
                                                                          real_footer(fs, path, **kw))[1])
    return reads


def test_recover_and_check_reads_each_entry_once_and_decides_as_the_check(tmp_path, counted):
    out = tmp_path / "out"
    _entry(out, "a", {"trainer": ["exact"]}, SCHEMA_VERSION)
    _entry(out, "b", {"trainer": ["exact"]}, SCHEMA_VERSION)
    assert migrate.recover_and_check(str(out)) == []
    assert sorted(counted) == [("whole", str(out / "runs" / f"run_id={r}" / commit.PART_FILE)) for r in "ab"]

    _entry(out, "old", {"run_id": ["old"], "trainer": ["exact"]}, None)  # version 1: a run_id column, no version
    with pytest.raises(InputError, match="flows.migrate") as by_both:
        migrate.recover_and_check(str(out))
    with pytest.raises(InputError, match="flows.migrate") as by_check:
        migrate.check_schema_version(str(out))
    assert str(by_both.value) == str(by_check.value)


def test_an_entry_recover_did_not_read_is_read_by_its_footer(tmp_path, counted):
    """Object storage (recover reads no entry) and a run id with a staging area (a rerun replaces its entry)."""
    out = tmp_path / "out"
    _entry(out, "a", {"trainer": ["exact"]}, str(int(SCHEMA_VERSION) + 1))
    (out / commit.STAGING / "a.0000").mkdir(parents=True)  # no lease, but just made: a live run's area
    with pytest.raises(InputError, match="newer version"):
        migrate.recover_and_check(str(out))
    assert [kind for kind, _ in counted] == ["footer"]


def test_runs_of_version_2_take_runs_of_version_3_without_a_migration(tmp_path):
    """Version 3 only added (the cv dataset, columns of cross-validated runs): version 2 runs are neither
    refused nor rewritten; version 1 runs still are, and only they are migrated."""
    out = tmp_path / "out"
    _entry(out, "v2", {"trainer": ["exact"]}, "2")
    _entry(out, "v3", {"trainer": ["exact"]}, SCHEMA_VERSION)
    files = {p: p.read_bytes() for p in out.rglob("*.parquet")}
    assert migrate.recover_and_check(str(out)) == []
    done = migrate.migrate(str(out))
    assert (done.runs, done.files, done.current) == ([], [], 2)
    assert f"2 run(s) already at version 2 to {SCHEMA_VERSION}" in done.text(dry_run=False)
    _entry(out, "v1", {"run_id": ["v1"], "trainer": ["exact"]}, None)
    with pytest.raises(InputError, match="schema version 1 .*flows.migrate"):
        migrate.check_schema_version(str(out))
    assert migrate.migrate(str(out)).runs == ["v1"]
    migrate.check_schema_version(str(out))
    assert {p: p.read_bytes() for p in files} == files  # the version 2 and 3 entries untouched
    assert migrate.run_versions(str(out)) == {"v1": SCHEMA_VERSION, "v2": "2", "v3": SCHEMA_VERSION}
