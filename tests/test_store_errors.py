"""Bad cases of the object store: each must end in a clear, typed GlassFinderError."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from glassfinder.errors import (
    BucketNotFoundError,
    InvalidStoreURIError,
    ObjectExistsError,
    StaleWriteError,
    StoreAuthError,
    StoreFaultError,
    StoreUnavailableError,
)
from glassfinder.store import LocalStore, S3Store, open_store, parse_store_uri, split_object_uri
from glassfinder.store.seaweed import SeaweedServer, free_ports, new_server
from tests.conftest import new_bucket_store, s3_config
from tests.flaky_proxy import flaky_proxy


# --- URIs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "non-empty"),
        ("s3://", "no bucket"),
        ("s3:///prefix", "no bucket"),
        ("s3://UPPER/x", "invalid bucket"),
        ("s3://ab/x", "invalid bucket"),
        ("s3://bucket/a//b", "path segment"),
        ("s3://bucket/x?versionId=3", "query"),
        ("gs://bucket/x", "unsupported store URI scheme 'gs'"),
        ("http://example/x", "unsupported"),
        ("file://host/path", "no host"),
    ],
)
def test_malformed_uri_is_refused_with_reason(uri: str, message: str) -> None:
    with pytest.raises(InvalidStoreURIError, match=message):
        open_store(uri)


def test_uri_forms_select_backend(tmp_path: Path) -> None:
    assert parse_store_uri("s3://my-bucket/a/b/").prefix == "a/b"
    assert isinstance(open_store("s3://my-bucket/a"), S3Store)
    assert isinstance(open_store(f"file://{tmp_path}"), LocalStore)
    assert isinstance(open_store(str(tmp_path / "rel")), LocalStore)


def test_local_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(InvalidStoreURIError, match="is a file"):
        LocalStore(tmp_path / "f")


# --- S3 failures --------------------------------------------------------------------------------
def test_missing_bucket_is_named(seaweed: SeaweedServer) -> None:
    store = S3Store("gf-no-such-bucket", config=s3_config(seaweed))
    for op in (
        lambda: store.get("k"),
        lambda: store.head("k"),
        lambda: store.put("k", b"x"),
        lambda: list(store.list()),
    ):
        with pytest.raises(BucketNotFoundError, match="'gf-no-such-bucket' does not exist"):
            op()


def test_a_server_whose_port_was_taken_meanwhile_starts_on_its_own_ports(
    seaweed: SeaweedServer, tmp_path: Path
) -> None:
    """Free ports are only free when chosen: if another server binds one first, `weed` exits, and
    a start that then found the other server answering would send every request (and every
    pause) to the wrong process. A first start draws new ports; a restart keeps its address and
    says why it cannot."""
    server = new_server(tmp_path / "weed", access_key="gf-clash", secret_key="gf-clash-secret")
    server.ports["s3.port"] = seaweed.ports["s3.port"]
    server.start()
    try:
        assert server.endpoint_url != seaweed.endpoint_url
        store = new_bucket_store(server)  # its own credentials: the other server does not know them
        store.put("k", b"mine")
        server.pause()
        try:
            stalled = S3Store(store.bucket, config=s3_config(server, deadline_s=1.0, read_timeout_s=0.3))
            with pytest.raises(StoreUnavailableError, match=re.escape(server.endpoint_url)):
                stalled.get("k")  # the paused process is the one that serves it
        finally:
            server.resume()
        server.stop()
        server.ports["s3.port"] = seaweed.ports["s3.port"]
        with pytest.raises(StoreFaultError, match=r"could not bind its ports .*not available"):
            server.start(timeout_s=20)
    finally:
        server.stop()


@pytest.mark.parametrize("field", ["secret_access_key", "access_key_id"])
def test_wrong_credentials_are_auth_errors(seaweed: SeaweedServer, field: str) -> None:
    good = new_bucket_store(seaweed)
    good.put("k", b"x")
    bad = S3Store(good.bucket, config=s3_config(seaweed, **{field: "wrong-credential"}))
    for op in (
        lambda: bad.get("k"),
        lambda: bad.head("k"),
        lambda: bad.put("k", b"y"),
        lambda: list(bad.list()),
    ):
        with pytest.raises(StoreAuthError, match="refused the credentials"):
            op()
    assert good.get("k") == b"x"


def test_unreachable_endpoint_is_unavailable_after_retries() -> None:
    (port,) = free_ports(1)  # nothing listens there
    store = S3Store(
        "gf-bucket",
        config=s3_config(
            SeaweedServer(Path("."), "a", "b", {"s3.port": port}, Path("log")),
            max_attempts=2,
            connect_timeout_s=0.5,
        ),
    )
    start = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=r"unavailable .* after 2 attempts"):
        store.get("k")
    assert time.monotonic() - start < 20


def test_transient_errors_are_retried_until_success(seaweed: SeaweedServer) -> None:
    target = new_bucket_store(seaweed)
    with flaky_proxy(seaweed.endpoint_url) as proxy:
        store = S3Store(target.bucket, config=s3_config(seaweed, endpoint_url=proxy.url, max_attempts=4))
        proxy.fail_with_503 = 2
        store.put("k", b"after two 503s")
        assert [status for _, _, status in proxy.requests] == [503, 503, 200]
        assert target.get("k") == b"after two 503s"


def test_transient_errors_past_the_budget_surface_as_unavailable(seaweed: SeaweedServer) -> None:
    target = new_bucket_store(seaweed)
    with flaky_proxy(seaweed.endpoint_url) as proxy:
        store = S3Store(target.bucket, config=s3_config(seaweed, endpoint_url=proxy.url, max_attempts=3))
        proxy.fail_with_503 = 10
        with pytest.raises(StoreUnavailableError, match="after 3 attempts"):
            store.put("k", b"x")
        assert len(proxy.requests) == 3


def test_failed_precondition_is_not_retried(seaweed: SeaweedServer) -> None:
    target = new_bucket_store(seaweed)
    target.put("k", b"exists")
    with flaky_proxy(seaweed.endpoint_url) as proxy:
        store = S3Store(target.bucket, config=s3_config(seaweed, endpoint_url=proxy.url, max_attempts=4))
        with pytest.raises(ObjectExistsError):
            store.put("k", b"again", create_only=True)
        assert [(m, s) for m, _, s in proxy.requests] == [("PUT", 412)]


def test_lost_answer_to_landed_create_only_write_is_success(seaweed: SeaweedServer) -> None:
    """The write lands, its answer is lost, the retry meets our own object: not a conflict."""
    target = new_bucket_store(seaweed)
    with flaky_proxy(seaweed.endpoint_url) as proxy:
        store = S3Store(target.bucket, config=s3_config(seaweed, endpoint_url=proxy.url, max_attempts=3))
        proxy.only_methods = {"PUT"}
        proxy.drop_after_forward = 1
        info = store.put("shard", b"content-addressed bytes", create_only=True)
        assert [s for m, _, s in proxy.requests if m == "PUT"] == [-1, 412]
        assert info.etag == target.head("shard").etag
    assert target.get("shard") == b"content-addressed bytes"


def test_lost_answer_does_not_hide_a_real_conflict(seaweed: SeaweedServer) -> None:
    target = new_bucket_store(seaweed)
    target.put("shard", b"someone else's bytes")
    with flaky_proxy(seaweed.endpoint_url) as proxy:
        store = S3Store(target.bucket, config=s3_config(seaweed, endpoint_url=proxy.url, max_attempts=3))
        proxy.only_methods = {"PUT"}
        proxy.fail_with_503 = 1  # forces a retry, then the real 412
        with pytest.raises(ObjectExistsError):
            store.put("shard", b"my bytes", create_only=True)
    assert target.get("shard") == b"someone else's bytes"


def test_lost_answer_to_landed_compare_and_swap_is_success(seaweed: SeaweedServer) -> None:
    target = new_bucket_store(seaweed)
    v1 = target.put("CURRENT", b"v1")
    with flaky_proxy(seaweed.endpoint_url) as proxy:
        store = S3Store(target.bucket, config=s3_config(seaweed, endpoint_url=proxy.url, max_attempts=3))
        proxy.only_methods = {"PUT"}
        proxy.drop_after_forward = 1
        store.put("CURRENT", b"v2", if_match=v1.etag)
    assert target.get("CURRENT") == b"v2"
    with pytest.raises(StaleWriteError):
        target.put("CURRENT", b"v3", if_match=v1.etag)


def test_prefix_rooted_stores_are_isolated(seaweed: SeaweedServer, tmp_path: Path) -> None:
    a = new_bucket_store(seaweed, prefix="tenant-a")
    b = S3Store(a.bucket, "tenant-b", config=a.config)
    a.put("x", b"a")
    b.put("x", b"b")
    assert a.get("x") == b"a" and b.get("x") == b"b"
    assert [i.key for i in a.list()] == ["x"]
    whole = S3Store(a.bucket, config=a.config)
    assert [i.key for i in whole.list()] == ["tenant-a/x", "tenant-b/x"]


def test_a_missing_bucket_is_one_clear_cli_line_and_exit_1(seaweed: SeaweedServer, tmp_path: Path) -> None:
    """The store's errors reach the user as the CLI's one line (no traceback), naming the bucket."""
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": seaweed.endpoint_url,
        "AWS_ACCESS_KEY_ID": seaweed.access_key,
        "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
        "AWS_REGION": "us-east-1",
    }
    out = subprocess.run(
        [sys.executable, "-m", "glassfinder.cli", "store", "ls", "--store", "s3://no-such-bucket-gf"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("glassfinder: error:") and "no-such-bucket-gf" in line


# --- local crash atomicity ----------------------------------------------------------------------
def test_local_write_killed_midway_leaves_old_object(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put("obj", b"old version")
    marker = tmp_path / "writing"
    child = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from glassfinder.store import LocalStore

        class Slow:
            sent = 0
            def read(self, n=-1):
                if self.sent == 3:
                    Path({str(marker)!r}).touch()
                    time.sleep(60)
                self.sent += 1
                return b"n" * (1 << 20)

        LocalStore({str(tmp_path / "store")!r}).put("obj", Slow())
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert proc.poll() is None, "writer process died before reaching the middle of its write"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert store.get("obj") == b"old version"
    assert [i.key for i in store.list()] == ["obj"]


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/dir/file.csv", ("s3://bucket/dir", "file.csv")),
        ("/abs/path/manifest.parquet", ("/abs/path", "manifest.parquet")),
        ("/manifest.json", ("/", "manifest.json")),
        ("manifest.csv", (".", "manifest.csv")),
        ("rel/dir/manifest.csv", ("rel/dir", "manifest.csv")),
    ],
)
def test_an_object_uri_splits_into_its_store_and_key(uri: str, expected: tuple[str, str]) -> None:
    assert split_object_uri(uri) == expected


def test_an_object_uri_naming_only_a_bucket_is_refused() -> None:
    with pytest.raises(InvalidStoreURIError, match="names a bucket"):
        split_object_uri("s3://bucket")
