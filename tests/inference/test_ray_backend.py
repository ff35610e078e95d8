"""Tagging on Ray (issue 14): a local instance, photos in and shards out of an S3 server on loopback, a two-node
cluster on this machine reached through Ray Client, and a job killed halfway then resumed."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'fashiontag[ray]')")
pq = pytest.importorskip("pyarrow.parquet")

from fashiontag.inference.predict import tag_paths  # noqa: E402
from fashiontag.inference.ray_backend import (  # noqa: E402
    SHARD_PREFIX,
    _read,
    filesystem,
    list_photos,
    open_output,
    shard_paths,
    tag_on_ray,
)
from fashiontag.inference.tagger import Tagger, has_review_columns  # noqa: E402

ENGINE = "onnx"
SRC = str(Path(__file__).resolve().parents[2] / "src")
# Ray binds and dials the node addresses it is given. The nodes get loopback addresses other than 127.0.0.1,
# which Ray would replace by this machine's network address: traffic stays on loopback.
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"


@pytest.fixture(scope="module")
def expected(catalog):
    """The single-process predict rows for the synthetic catalog, plus a missing file, keyed by path."""
    sources = [str(catalog.root / "images"), str(catalog.root / "images" / "missing.jpg")]
    rows = tag_paths(Tagger.load(engine=ENGINE), sources, batch_size=64)
    return sources, {r["path"]: r for r in rows}


def assert_same_rows(rows: list[dict], expected: dict[str, dict], key=lambda path: path, same_errors=True):
    """Labels identical, confidences within 1e-5, unreadable photos with their error (the same one unless the
    photo was read from bytes rather than a path, where PIL's message names the buffer)."""
    by_key = {key(r["path"]): r for r in rows}
    assert len(by_key) == len(rows), "a photo has two rows"
    assert sorted(by_key) == sorted(key(p) for p in expected)
    for path, want in expected.items():
        got = by_key[key(path)]
        assert got["id"] == want["id"]
        assert bool(got["error"]) == bool(want["error"]), path
        if same_errors:
            assert got["error"] == want["error"], path
        for column, value in want.items():
            if column.endswith("_confidence"):
                assert got[column] == pytest.approx(value, abs=1e-5), (path, column)
            elif column not in ("path", "id", "error"):
                assert got[column] == value, (path, column)
        if want["error"]:
            assert all(got[c] is None for c in got if c not in ("path", "id", "error", "size", "mtime_ns"))


def shard_rows(out: str) -> list[dict]:
    fs, folder = filesystem(out)
    return [row for shard in shard_paths(fs, folder) for row in pq.read_table(shard, filesystem=fs).to_pylist()]


def test_a_bad_out_is_refused_before_the_model_or_the_cluster(catalog, tmp_path):
    """Issue 20 #10: an existing file, a place that cannot be written or an unreachable bucket as --out gave
    tracebacks after the photos were tagged; open_output checks it first, by writing a file there."""
    from typer.testing import CliRunner

    from fashiontag.cli import app
    (tmp_path / "taken").write_text("")
    for out, words in [(tmp_path / "taken", "is a file"), (tmp_path / "taken" / "sub", "Not a directory"),
                       ("s3://bucket/tags?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1",
                        "Could not connect"),
                       ("s3://bucket/tags?secret_key=hush&bogus=1", "s3://bucket/tags cannot be written")]:
        with pytest.raises(ValueError, match=words) as e:
            open_output(str(out))
        assert "hush" not in str(e.value)  # a URI's options (credentials) stay out of messages
    result = CliRunner().invoke(app, ["predict", str(catalog.root / "images"), "--on", "ray", "--out",
                                      str(tmp_path / "taken"), "--model", "no/such/model"])
    assert result.exit_code == 2 and "--out" in result.output and "is a file" in result.output
    fs, folder = open_output(str(tmp_path / "new" / "tags"))
    assert [p.name for p in (tmp_path / "new" / "tags").iterdir()] == []  # made, and the probe removed


def test_a_file_name_that_is_not_utf8_is_listed_printable_and_read_by_its_bytes(catalog, tmp_path):
    """Issue 20 #7: Arrow's strings are UTF-8, and `caf\\xe9.jpg` (Latin-1) stopped the listing."""
    photos = os.fsencode(tmp_path)
    shutil.copy(catalog.root / "images" / "1000.jpg", os.path.join(photos, b"caf\xe9.jpg"))
    shutil.copy(catalog.root / "images" / "1001.jpg", os.path.join(photos, b"plain.jpg"))
    listing = list_photos([str(tmp_path)]).to_pylist()
    assert sorted(r["path"] for r in listing) == [f"{tmp_path}/caf\\xe9.jpg", f"{tmp_path}/plain.jpg"]
    photo_input = Tagger.load(engine=ENGINE).photo_input
    fs = filesystem(str(tmp_path))[0]
    assert all(_read(fs, r["key"], photo_input)[1] == "" for r in listing)


class TestLocalInstance:
    @pytest.fixture(scope="class")
    @classmethod
    def local_ray(cls):
        try:
            ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False,
                     _node_ip_address="127.0.0.1")
        except Exception as e:  # noqa: BLE001 - whatever stops Ray from starting here is the skip reason
            pytest.skip(f"a local Ray instance cannot start here: {type(e).__name__}: {e}")
        yield
        ray.shutdown()

    def test_rows_equal_single_process_predict_and_rerun_skips_them(self, local_ray, expected, tmp_path):
        sources, want = expected
        out = str(tmp_path / "tags")
        summary = tag_on_ray(sources, out, engine=ENGINE, csv=True)
        errors = sum(bool(r["error"]) for r in want.values())
        assert (summary["tagged"], summary["errors"], summary["skipped"]) == (len(want) - errors, errors, 0)
        assert summary["shards"] >= 1 and summary["photos_per_s"] > 0
        rows = shard_rows(out)
        assert_same_rows(rows, want)
        assert list(rows[0])[:2] == ["path", "id"] and list(rows[0])[-3:] == ["error", "size", "mtime_ns"]

        with open(summary["csv"], newline="") as f:
            merged = list(csv.DictReader(f))
        tagger = Tagger.load(engine=ENGINE)
        columns = tagger.columns(review=has_review_columns(tagger.model, None))  # the shipped model has review thresholds
        assert list(merged[0]) == columns and [r["path"] for r in merged] == sorted(want)
        assert {r["path"]: r["articleType"] for r in merged} == {p: w.get("articleType", "") for p, w in want.items()}

        again = tag_on_ray(sources, out, engine=ENGINE)
        assert (again["tagged"], again["errors"], again["skipped"], again["shards"]) == (0, 0, len(want), 0)

    def test_photos_from_s3_and_shards_back_to_it(self, local_ray, expected, catalog):
        moto_server = pytest.importorskip("moto.server", reason="moto is not installed (pip install 'moto[server]')")
        import pyarrow.fs as pafs

        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            _, port = server.get_host_and_port()
            # Credentials in the URI travel with the pickled filesystem to every worker; moto takes any.
            options = f"?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
            s3, _ = pafs.FileSystem.from_uri(f"s3://key:secret@shop/{options}&allow_bucket_creation=true")
            s3.create_dir("shop")
            for photo in (catalog.root / "images").iterdir():
                with s3.open_output_stream(f"shop/photos/{photo.name}") as f:
                    f.write(photo.read_bytes())

            summary = tag_on_ray([f"s3://key:secret@shop/photos/{options}"], f"s3://key:secret@shop/tags/{options}",
                                 engine=ENGINE, csv=True)
            rows = shard_rows(f"s3://key:secret@shop/tags/{options}")
            merged = s3.get_file_info("shop/tags/tags.csv")
        finally:
            server.stop()
        _, want = expected
        local = {p: w for p, w in want.items() if not p.endswith("missing.jpg")}
        assert all(r["path"].startswith("s3://shop/photos/") for r in rows)
        assert_same_rows(rows, local, key=lambda path: Path(path).name, same_errors=False)
        assert summary["csv"] == "s3://shop/tags/tags.csv" and merged.size > 1000 and summary["shards"] >= 1


class TwoNodeCluster:
    """`ray start --head` and `ray start --address` with one CPU each, on free ports and a temporary folder.
    Each node runs in a session of its own, so that stopping it ends exactly its processes, workers included."""

    def __init__(self, root: Path):
        self.root = root
        # A Ray Client connection starts a server process on the head that must answer within 30 s by default:
        # on two busy cores importing Ray can take longer, so the test gives it two minutes.
        self.env = {**os.environ, "PYTHONPATH": SRC, "RAY_AUTH_MODE": "disabled",
                    "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "120"}
        self.gcs, self.client = free_port(), free_port()
        self.nodes: list[subprocess.Popen] = []

    def start(self) -> None:
        self._node("head", HEAD_IP, "--head", f"--port={self.gcs}", f"--ray-client-server-port={self.client}",
                   "--include-dashboard=false", f"--dashboard-port={free_port()}", f"--temp-dir={self.root}")
        self._node("worker", WORKER_IP, f"--address={self.address}")
        deadline = time.monotonic() + 90
        while self._alive_nodes() < 2:
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.nodes):
                raise RuntimeError("the two-node cluster did not come up:\n" + self.logs())
            time.sleep(1)
        time.sleep(3)  # a node whose agent fails joins first and leaves a second later, its `ray start` ended
        if any(p.poll() is not None for p in self.nodes):
            raise RuntimeError("a node of the two-node cluster left right after joining:\n" + self.logs())

    @property
    def address(self) -> str:
        return f"{HEAD_IP}:{self.gcs}"

    def _node(self, name: str, ip: str, *args: str) -> None:
        ports = [f"--{flag}={free_port()}" for flag in ("node-manager-port", "object-manager-port",
                 "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                 "metrics-export-port")]
        log = open(self.root / f"{name}.log", "w")
        self.nodes.append(subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--block", f"--node-ip-address={ip}", "--num-cpus=1",
             f"--object-store-memory={150 * 2**20}", "--disable-usage-stats", *ports, *args],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root, start_new_session=True))

    def _alive_nodes(self) -> int:
        result = subprocess.run([str(Path(sys.executable).with_name("ray")), "status", f"--address={self.address}"],
                                capture_output=True, text=True, env=self.env, timeout=60)
        return result.stdout.count("node_") if result.returncode == 0 else 0

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.root.glob("*.log"))

    def stop(self) -> None:
        sessions = {p.pid for p in self.nodes}
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 0)):
            for pid in session_members(sessions):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while session_members(sessions) and time.monotonic() < deadline:
                time.sleep(0.2)
        for p in self.nodes:
            p.wait()


_GIVEN: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before: the nodes bind theirs only once started, so the operating system
    can offer one twice in the meantime (a worker's runtime-env agent once got the head's GCS port, and the worker
    died a second after joining, leaving a one-CPU cluster on which a job waits forever)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def session_members(sessions: set[int]) -> list[int]:
    """Live processes whose session is one of `sessions` (field 6 of /proc/PID/stat), zombies left out."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) in sessions and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="ftray"))  # short: Ray's socket paths live under it
    nodes = TwoNodeCluster(root)
    try:
        nodes.start()
    except Exception as e:  # noqa: BLE001
        nodes.stop()
        pytest.skip(f"a two-node Ray cluster cannot start here: {e}")
    yield nodes
    nodes.stop()
    shutil.rmtree(root, ignore_errors=True)


def start_driver(cluster: TwoNodeCluster, args: list[str], log: Path) -> subprocess.Popen:
    """A driver process of its own, as a user's job runs; its output goes to log (Ray's progress lines would fill
    a pipe that nobody reads while the test waits)."""
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, *args], stdout=f, stderr=subprocess.STDOUT, env=cluster.env)


def run_job(cluster: TwoNodeCluster, sources: list[str], out: str, address: str, log: Path, **options):
    """tag_on_ray in a driver process; its summary is the last line of log."""
    code = ("import json, sys; from fashiontag.inference.ray_backend import tag_on_ray; "
            "print(json.dumps(tag_on_ray(json.loads(sys.argv[1]), sys.argv[2], address=sys.argv[3], "
            "**json.loads(sys.argv[4]))))")
    return start_driver(cluster, ["-c", code, json.dumps(sources), out, address,
                                  json.dumps({"engine": ENGINE, **options})], log)


def finish(job: subprocess.Popen, log: Path) -> list[str]:
    """The driver's output lines, once it has succeeded."""
    job.wait(timeout=300)
    assert job.returncode == 0, log.read_text()[-3000:]
    return log.read_text().splitlines()


def test_two_node_cluster_through_ray_client(cluster, expected, tmp_path):
    sources, want = expected
    out, log = tmp_path / "tags", tmp_path / "job.log"
    job = start_driver(cluster, ["-m", "fashiontag", "predict", *sources, "--out", str(out), "--engine", ENGINE,
                                 "--on", f"ray://{HEAD_IP}:{cluster.client}", "--csv"], log)
    errors = sum(bool(r["error"]) for r in want.values())
    said = f"tagged {len(want) - errors:,} photos, {errors} could not be read, 0 were tagged before"
    assert any(line.startswith(said) for line in finish(job, log))
    assert_same_rows(shard_rows(str(out)), want)
    assert (out / "tags.csv").is_file()


def test_killed_job_resumes_without_losing_or_repeating_a_photo(cluster, catalog, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    originals = sorted((catalog.root / "images").iterdir())
    for copy in range(4):  # enough photos for many small shards
        for photo in originals:
            shutil.copy(photo, photos / f"{copy}-{photo.name}")
    out = tmp_path / "tags"
    log = tmp_path / "killed.log"
    job = run_job(cluster, [str(photos)], str(out), cluster.address, log, batch_size=16, shard_rows=48)
    deadline = time.monotonic() + 300
    while len(list(out.glob(f"{SHARD_PREFIX}*.parquet"))) < 2:
        assert job.poll() is None, "the job ended before it could be killed:\n" + log.read_text()[-2000:]
        if time.monotonic() > deadline:
            job.kill()
            pytest.fail("no shard written in 5 minutes:\n" + log.read_text()[-2000:] + cluster.logs())
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    # The cluster ends the dead driver's tasks; one caught between writing and renaming may still land a shard.
    shards = sorted(out.glob(f"{SHARD_PREFIX}*.parquet"))
    while time.sleep(2) or shards != (shards := sorted(out.glob(f"{SHARD_PREFIX}*.parquet"))):
        pass
    before = shard_rows(str(out))
    assert 0 < len(before) < len(originals) * 4, "the job was not killed halfway"

    log = tmp_path / "resumed.log"
    lines = finish(run_job(cluster, [str(photos)], str(out), f"ray://{HEAD_IP}:{cluster.client}", log), log)
    summary = json.loads(next(line for line in reversed(lines) if line.startswith("{")))
    assert summary["skipped"] == len(before)
    rows = shard_rows(str(out))
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "a photo was tagged twice"
    assert sorted(paths) == sorted(str(p) for p in photos.iterdir()), "a photo is missing"
