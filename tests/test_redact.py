"""Credentials never leak: a URI with credentials in it (`s3://KEY:SECRET@bucket/path`) is redacted from
everything persisted, logged, printed or hashed, while the run itself uses the real one.

The end-to-end test runs `python -m flows.train` as users do, against the local S3-compatible server (moto)
with inline credentials and no AWS_* credentials in the environment: once with two ranks under torchrun,
once as the Prefect flow against a Prefect server it starts. Afterwards no byte of the secret (as written,
URL-decoded, nor the key id) is in any object of the bucket, any file of the local output, any file of the
Prefect server's home (its database) or the commands' own, anything the runs printed, or the command line
of any process the two-rank run started. The library tests check the same of `steps.run` and
`scoring.score` given inline credentials directly, and that a new secret keeps the fingerprint, the
`--skip-if-unchanged` match and the snapshot identity.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from linreg import redact
from linreg.config import make_config
from linreg.errors import InputError
from linreg.inputs import tables
from linreg.launch import job
from linreg.outputs import runindex, snapshot
from linreg.pipeline import reuse, scoring, steps
from tests.conftest import REPO
from tests.helpers import linear_tables, stop_process_group

KEY_ID = "AKIDLINREG7f3a"
SECRET = "SeCrEt/7f3a9c"  # its '/' is written %2F in a URI: both forms must stay hidden
FORMS = (SECRET, urllib.parse.quote(SECRET, safe=""), KEY_ID)


@pytest.fixture(autouse=True)
def own_registry(monkeypatch):
    """Each test starts with no protected URIs, and the real ones it protects do not outlive it."""
    monkeypatch.setenv(redact.ENV, "")


def s3_uri(bucket: str, path: str, endpoint: str, *, key: str = KEY_ID, secret: str = SECRET) -> str:
    """s3://KEY:SECRET@bucket/path?endpoint_override=...: everything pyarrow needs, in the URI."""
    host = endpoint.split("://", 1)[1]
    return (f"s3://{key}:{urllib.parse.quote(secret, safe='')}@{bucket}/{path}"
            f"?endpoint_override={host}&scheme=http&region=us-east-1")


def upload_inputs(tmp_path: Path, bucket: str, endpoint: str) -> tuple[str, str]:
    """Small weather and yields tables under s3://bucket/in/; their URIs with the credentials inline."""
    linear_tables(tmp_path, files=2)
    fs = pafs.S3FileSystem(endpoint_override=endpoint.split("://")[1], scheme="http", region="us-east-1")
    for table in ("weather", "yields"):
        pafs.copy_files(str(tmp_path / table), f"{bucket}/in/{table}", destination_filesystem=fs)
    return s3_uri(bucket, "in/weather", endpoint), s3_uri(bucket, "in/yields", endpoint)


def leaks(data: bytes | str) -> list[str]:
    """The forms of the credential found in `data`."""
    data = data.encode() if isinstance(data, str) else data
    return [form for form in FORMS if form.encode() in data]


# ---------------------------------------------------------------------------------------------------------
# redact()

def test_redact_removes_user_info_and_keeps_scheme_host_and_path():
    uri = "s3://AKID:SeCrEt@bucket/in/weather?endpoint_override=127.0.0.1:9000&scheme=http"
    assert redact.redact(uri) == "s3://***@bucket/in/weather?endpoint_override=127.0.0.1:9000&scheme=http"
    assert redact.redact("hdfs://user@namenode:8020/data") == "hdfs://***@namenode:8020/data"
    assert redact.redact("s3://AKID:raw/slash@bucket/p") == "s3://***@bucket/p"  # an unencoded '/' in the secret


def test_redact_hides_sensitive_query_values_whatever_their_case():
    uri = ("https://host/obj?X-Amz-Credential=AKID%2F2026&X-Amz-Signature=abc123&Access_Key=k1&SECRET_KEY=s1"
           "&session_token=t1&account_key=a1&endpoint_override=minio:9000&region=eu-west-1&role_arn=arn:aws:r")
    assert redact.redact(uri) == ("https://host/obj?X-Amz-Credential=***&X-Amz-Signature=***&Access_Key=***"
                                  "&SECRET_KEY=***&session_token=***&account_key=***&endpoint_override=minio:9000"
                                  "&region=eu-west-1&role_arn=arn:aws:r")


def test_redact_finds_credentials_inside_messages_and_name_value_text():
    text = "The weather table 's3://K:S3cr3tValue@b/w' does not exist; retry with password=hunter22, keys=a,b"
    assert redact.redact(text) == ("The weather table 's3://***@b/w' does not exist; retry with password=***, "
                                   "keys=a,b")


@pytest.mark.parametrize("text", ["data/sample/weather.parquet", "s3://bucket/out/runs/run_id=nightly-1",
                                  "gs://bucket/p?scheme=http", "file:///tmp/x.parquet", "join_keys=region,year",
                                  "run nightly: plan: 5 column(s)", ""])
def test_redact_leaves_text_without_credentials_unchanged(text):
    assert redact.redact(text) == text
    assert not redact.has_credentials(text)


def test_a_protected_secret_is_redacted_anywhere_url_encoded_or_not():
    uri = "s3://AKIDxyz:" + urllib.parse.quote("p@ss/w0rd+", safe="") + "@bucket/p"
    redacted = redact.protect(uri)
    assert redacted == "s3://***@bucket/p" and redact.reveal(redacted) == uri
    assert "p@ss/w0rd+" in redact.credentials_of(uri)
    # a library quoting the decoded secret outside any URI
    assert redact.redact("signature mismatch for p@ss/w0rd+ (AKIDxyz)") == "signature mismatch for *** (***)"


def test_protect_passes_real_uris_to_children_through_the_environment_only():
    uri = "s3://AKIDxyz:topsecret1@bucket/p?endpoint_override=h:1"
    redacted = redact.protect(uri)
    child = subprocess.run([sys.executable, "-c", "import sys; from linreg import redact; "
                            "print(redact.reveal(sys.argv[1]))", redacted], cwd=REPO, capture_output=True,
                           text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == uri


def test_a_path_under_a_protected_uri_gets_its_credentials_back():
    """Paths built from a protected output root (OUTPUT/weights/run_id=ID) reach the same store with its keys."""
    redact.protect("s3://AKIDxyz:topsecret1@bucket/out?endpoint_override=h:1&scheme=http")
    assert (redact.reveal("s3://***@bucket/out/weights/run_id=a?endpoint_override=h:1&scheme=http")
            == "s3://AKIDxyz:topsecret1@bucket/out/weights/run_id=a?endpoint_override=h:1&scheme=http")
    redact.protect("https://host/a?sig=abc123&v=1")
    assert redact.reveal("https://host/b?sig=***&v=2") == "https://host/b?sig=abc123&v=2"
    with pytest.raises(InputError, match="redacted credential"):  # another bucket: not the same store
        redact.reveal("s3://***@other-bucket/out")


def test_a_redacted_uri_without_its_real_one_is_an_input_error():
    with pytest.raises(InputError, match=r"'s3://\*\*\*@bucket/p' carries a redacted credential"):
        redact.reveal("s3://***@bucket/p")
    with pytest.raises(InputError, match="redacted credential"):
        tables.open_table("s3://***@bucket/weather", "weather")


def test_log_records_are_redacted_when_created(caplog):
    previous = logging.getLogRecordFactory()
    try:
        redact.install_log_redaction()
        redact.install_log_redaction()  # idempotent: one layer
        with caplog.at_level(logging.INFO, logger="linreg.test"):
            logging.getLogger("linreg.test").info("opening %s", "s3://AKID:hunter2-x@bucket/w")
            try:
                raise OSError("cannot open s3://AKID:hunter2-x@bucket/w")
            except OSError:
                logging.getLogger("linreg.test").exception("failed")
        assert caplog.records[0].getMessage() == "opening s3://***@bucket/w"
        assert "hunter2-x" not in caplog.text and "s3://***@bucket/w" in caplog.text
    finally:
        logging.setLogRecordFactory(previous)


def test_deployment_parameters_with_a_credential_warn_once_naming_the_parameter(caplog):
    config = make_config(output="s3://AKIDxyz:topsecret1@bucket/out", weather="s3://AKIDxyz:topsecret1@b/w")
    previous = logging.getLogRecordFactory()
    try:
        with caplog.at_level(logging.WARNING, logger="linreg.flow"):
            protected = redact.protect_parameters(config, logging.getLogger("linreg.flow"))
    finally:
        logging.setLogRecordFactory(previous)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "config.weather, config.output" in warnings[0]
    assert "topsecret1" not in caplog.text
    assert (protected.output, protected.weather) == ("s3://***@bucket/out", "s3://***@b/w")
    assert redact.reveal(protected.output) == config.output
    caplog.clear()
    assert redact.protect_parameters(protected, logging.getLogger("linreg.flow")) == protected
    assert not caplog.records  # the CLI's redacted parameters: nothing to warn about


# ---------------------------------------------------------------------------------------------------------
# The library: outputs, fingerprint, skip-if-unchanged, the plan handed to ranks

def _read_all_objects(bucket: str, endpoint: str) -> dict[str, bytes]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            objects[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return objects


def test_library_runs_hide_the_secret_and_a_new_secret_keeps_fingerprint_and_skip(tmp_path, s3_server, s3_bucket):
    """pipeline.run and scoring.score with inline credentials (no entry point protected them): outputs, runs
    index and fingerprint carry only the redacted URI; the same run with another secret is unchanged."""
    upload_inputs(tmp_path, s3_bucket, s3_server)

    def config(secret, run_id):
        return make_config(weather=s3_uri(s3_bucket, "in/weather", s3_server, secret=secret),
                           yields=s3_uri(s3_bucket, "in/yields", s3_server, secret=secret),
                           output=s3_uri(s3_bucket, "out", s3_server, secret=secret), run_id=run_id)

    first = config(SECRET, "first")
    summary = steps.run(first)
    objects = _read_all_objects(s3_bucket, s3_server)
    written = {k: v for k, v in objects.items() if k.startswith("out/")}
    assert any(k.startswith("out/weights/run_id=first/") for k in written)
    assert {k: leaks(v) for k, v in written.items() if leaks(v)} == {}
    meta = pq.read_schema(pafs.FileSystem.from_uri(first.output)[0].open_input_file(
        f"{s3_bucket}/out/weights/run_id=first/part-0.parquet")).metadata
    assert b"s3://***@" + s3_bucket.encode() + b"/in/weather" in meta[b"linreg.config"]
    assert b"s3://***@" in meta[b"linreg.input_fingerprint"]
    assert not leaks(summary.text())

    scored = scoring.score(scoring.ScoreConfig(model=first.output, weather=first.weather, output=first.output,
                                               score_run_id="scored"))
    assert not leaks(scored.text())
    objects = _read_all_objects(s3_bucket, s3_server)
    assert any(k.startswith("out/scores/score_run_id=scored/") for k in objects)
    assert {k: leaks(v) for k, v in objects.items() if k.startswith("out/") and leaks(v)} == {}

    other = config("An0ther-s3cret", "second")
    opened = [tables.open_table(other.weather, "weather"), tables.open_table(other.yields, "yields")]
    assert tables.fingerprint(opened) == tables.fingerprint([tables.open_table(first.weather, "weather"),
                                                     tables.open_table(first.yields, "yields")])
    assert snapshot.identity(other, "inputs") == snapshot.identity(first, "inputs")  # snapshots resume too
    row = runindex.read_runs(first.output)[0]
    assert reuse.comparable(other.model_dump(mode="json")) == reuse.comparable(json.loads(row["config"]))
    other = other.model_copy(update={"skip_if_unchanged": True})
    assert reuse.find_unchanged_run(other)["run_id"] == "first"
    changed = other.model_copy(update={"seed": 5})
    assert reuse.find_unchanged_run(changed) is None  # the comparison still sees real changes


def test_the_plan_handed_to_ranks_holds_no_credential(tmp_path, s3_server, s3_bucket):
    """The Prefect job task pickles the plan for the ranks: without the staging filesystem (which holds
    the credentials it was made with), remade on the other side from the redacted output URI."""
    w, y, _, _ = linear_tables(tmp_path)
    config = redact.protect_config(make_config(weather=w, yields=y, output=s3_uri(s3_bucket, "out", s3_server),
                                               run_id="pickled"))
    plan = steps.plan_run(config)
    try:
        assert leaks(pickle.dumps(plan))  # what the check guards against: the filesystem object pickles its keys
        path = str(tmp_path / "plan.pkl")
        job.write_plan(plan, path)
        assert not leaks(Path(path).read_bytes())
        again = job.read_plan(path)
        assert again.staging.filesystem is not None and again.config.output == config.output
        again.staging.renew_lease()  # the remade filesystem reaches the staging area with the real credentials
    finally:
        steps.discard(plan)


# ---------------------------------------------------------------------------------------------------------
# End to end: the command line, a Prefect server, the ranks

class PrefectServer:
    """`prefect server start` on a free port of 127.0.0.1 with its own home, where its SQLite database is."""

    def __init__(self, home: Path):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.home, self.url, self.log = home, f"http://127.0.0.1:{port}/api", home.parent / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                          "--port", str(port)], cwd=REPO, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    return
            except OSError:
                assert time.monotonic() < deadline, "the Prefect server did not start"
                time.sleep(0.3)

    def stop(self) -> None:
        stop_process_group(self.proc)


def _cli_env(prefect_home: Path, prefect_url: str | None = None) -> dict:
    """The environment of a user's shell: no AWS credentials (they are in the URIs), no protected URIs."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "PREFECT_")) and k != redact.ENV}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PREFECT_HOME=str(prefect_home),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_EXTRA_LOGGERS="linreg")
    if prefect_url:
        env["PREFECT_API_URL"] = prefect_url
    return env


class CommandLines:
    """Records the command line of every descendant of a process while it runs (what `ps` shows)."""

    def __init__(self, pid: int):
        self.pid, self.seen = pid, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            parents = {}
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        with open(f"/proc/{entry}/stat") as f:
                            parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
                    except (OSError, ValueError, IndexError):
                        continue
            for pid in parents:
                ancestor = parents.get(pid)
                while ancestor not in (None, 0, 1, self.pid):
                    ancestor = parents.get(ancestor)
                if ancestor == self.pid and pid not in self.seen:
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as f:
                            self.seen[pid] = f.read().replace(b"\0", b" ")
                    except OSError:
                        pass
            time.sleep(0.05)

    def stop(self) -> dict[int, bytes]:
        self._stop.set()
        self._thread.join()
        return self.seen


def _files_with_leaks(root: Path) -> dict[str, list[str]]:
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            if leaks(path.read_bytes()) or leaks(str(path)):
                found[str(path)] = leaks(path.read_bytes()) + leaks(str(path))
    return found


def test_cli_run_with_inline_credentials_leaves_no_byte_of_the_secret(tmp_path, s3_server, s3_bucket):
    weather, yields = upload_inputs(tmp_path, s3_bucket, s3_server)
    output = s3_uri(s3_bucket, "out", s3_server)
    client_home = tmp_path / "client-prefect-home"  # the commands' own Prefect files (settings, any results)
    (tmp_path / "server").mkdir()
    server = PrefectServer(tmp_path / "server" / "home")  # boots while the ranks run (they need no Prefect)
    printed = []
    try:
        # 1. Two ranks under torchrun: inputs on S3, a local output; every command line of the job recorded.
        local = tmp_path / "local-out"
        with subprocess.Popen([sys.executable, "-m", "flows.train", "--weather", weather, "--yields", yields,
                               "--output", str(local), "--run-id", "ranks", "--nproc-per-node", "2"], cwd=REPO,
                              env=_cli_env(client_home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) as proc:
            lines = CommandLines(proc.pid)
            out, err = proc.communicate(timeout=300)
            command_lines = lines.stop()
        printed += [out, err]
        assert proc.returncode == 0, out + err

        # 2. The Prefect flow, one process, against the server: inputs and output on S3.
        server.wait_healthy()
        run = subprocess.run([sys.executable, "-m", "flows.train", "--weather", weather, "--yields", yields,
                              "--output", output, "--run-id", "inline"], cwd=REPO,
                             env=_cli_env(client_home, server.url), capture_output=True, text=True, timeout=300)
        printed += [run.stdout, run.stderr]
        assert run.returncode == 0, run.stdout + run.stderr
        assert f"s3://{s3_bucket}/out/weights/run_id=inline" in run.stdout
        database = b"".join(p.read_bytes() for p in server.home.rglob("*") if p.is_file())
        server_leaks = _files_with_leaks(server.home)
    finally:
        server.stop()

    ranks = [c for c in command_lines.values() if b"flows.train" in c and b"torch.distributed.run" not in c]
    assert len(ranks) >= 2, command_lines  # both ranks were seen, so the check below means something
    assert all(b"s3://***@" + s3_bucket.encode() in c for c in ranks)
    assert {pid: leaks(c) for pid, c in command_lines.items() if leaks(c)} == {}

    # Nothing the runs printed, nothing under the outputs, nothing in the Prefect server's database.
    assert [leaks(text) for text in printed if leaks(text)] == []
    objects = _read_all_objects(s3_bucket, s3_server)
    assert any(k.startswith("out/runs/run_id=inline/") for k in objects)
    assert {k: leaks(v) for k, v in objects.items() if k.startswith("out/") and leaks(v)} == {}
    assert (local / "runs" / "run_id=ranks" / "part-0.parquet").is_file()
    assert _files_with_leaks(local) == {}
    assert f"s3://***@{s3_bucket}/in/weather".encode() in database  # the flow's parameters are stored, redacted
    assert server_leaks == {} and _files_with_leaks(client_home) == {}
