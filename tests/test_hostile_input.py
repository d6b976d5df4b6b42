"""Hostile and careless input (issue 17): nothing outside the roots is read, nothing is lost, every
refusal is clean. Each test reproduces one finding and asserts the refusal and what was kept."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from glassfinder.catalog.generate import build_family
from glassfinder.catalog.ingest import CATALOG_MANIFEST_KEY, ingest_manifest, read_catalog
from glassfinder.catalog.sources import AssetRoots
from glassfinder.errors import (
    AssetSourceError,
    CatalogShrinkError,
    GlassFinderError,
    IndexCorruptError,
    IndexSignatureError,
    StoreError,
    StoreUnavailableError,
)
from glassfinder.index import signing
from glassfinder.index.reader import IndexReader
from glassfinder.index.versions import INDEX_FILE, MANIFEST_FILE, fetch_verified
from glassfinder.store import LocalStore, S3Config, S3Store
from glassfinder.store.seaweed import SeaweedServer, new_server
from tests.conftest import new_bucket_store, s3_config
from tests.test_index import built_from, make_catalog, publish

ROOT = Path(__file__).resolve().parents[1]


# --- what a test may watch: every file the process opens ----------------------------------------
_OPENED: list[str] | None = None
_AUDIT_LOCK = threading.Lock()


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _OPENED is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@pytest.fixture
def opened() -> Iterator[list[str]]:
    """Paths opened (builtins.open, os.open, io.open) while the test runs: the proof that a refused
    asset was never opened, let alone read (an audit hook, not a mock: the real calls happen)."""
    global _OPENED
    with _AUDIT_LOCK:
        _OPENED = []
        try:
            yield _OPENED
        finally:
            _OPENED = None


# --- a small export and a catalogue to protect ----------------------------------------------------
@pytest.fixture(scope="module")
def family() -> list[tuple[dict, bytes]]:
    return build_family(7, 4, 4)


@pytest.fixture
def export(tmp_path: Path, family) -> Path:
    """An export folder with four good assets."""
    root = tmp_path / "export"
    (root / "assets").mkdir(parents=True)
    for i, (_, glb) in enumerate(family):
        (root / "assets" / f"good-{i}.glb").write_bytes(glb)
    return root


def _manifest(folder: Path, rows: list[dict], name: str = "manifest.json") -> str:
    (folder / name).write_text(json.dumps(rows))
    return str(folder / name)


def _good_rows(n: int) -> list[dict]:
    return [{"product_id": f"P{i}", "asset_uri": f"assets/good-{i}.glb"} for i in range(n)]


@pytest.fixture
def catalog(tmp_path: Path, export: Path) -> LocalStore:
    """A store whose catalogue already holds the four good products."""
    dest = LocalStore(tmp_path / "store")
    ingest_manifest(_manifest(export, _good_rows(4), "first.json"), dest=dest)
    return dest


def _snapshot(store: LocalStore) -> tuple[str | None, bytes]:
    _, etag = read_catalog(store)
    return etag, store.get(CATALOG_MANIFEST_KEY) if etag else b""


# --- 1. a manifest row can read any file on the machine ----------------------------------------
def test_rows_naming_files_outside_the_export_are_refused_before_opening(
    tmp_path: Path, export: Path, opened: list[str]
) -> None:
    secret = tmp_path / "secret" / "passwd.glb"
    secret.parent.mkdir()
    secret.write_bytes(b"not for the catalogue")
    (export / "assets" / "link.glb").symlink_to(secret)  # a symlink inside the export
    (export / "assets" / "etc-link.glb").symlink_to("/etc/passwd")
    rows = [
        {"product_id": "abs", "asset_uri": "/etc/passwd"},
        {"product_id": "abs-tmp", "asset_uri": str(secret)},
        {"product_id": "file-uri", "asset_uri": "file:///etc/hostname"},
        {"product_id": "file-host", "asset_uri": "file://evil/etc/hostname"},
        {"product_id": "link", "asset_uri": "assets/link.glb"},
        {"product_id": "etc-link", "asset_uri": "assets/etc-link.glb"},
        {"product_id": "dotdot", "asset_uri": "../secret/passwd.glb"},
        {"product_id": "http", "asset_uri": "http://example.com/a.glb"},
        {"product_id": "s3-elsewhere", "asset_uri": "s3://other-bucket/a.glb"},
        *_good_rows(1),
    ]
    manifest = _manifest(export, rows)
    opened.clear()  # what the test itself wrote does not count
    report = ingest_manifest(manifest, dest=LocalStore(tmp_path / "store"))
    reasons = {q.product_id: q.reason for q in report.quarantined}
    assert reasons == {
        "abs": "outside_roots",
        "abs-tmp": "outside_roots",
        "file-uri": "outside_roots",
        "file-host": "bad_uri",
        "link": "outside_roots",
        "etc-link": "outside_roots",
        "dotdot": "outside_roots",
        "http": "bad_uri",
        "s3-elsewhere": "outside_roots",
    }
    assert [r["product_id"] for r in report.accepted] == ["P0"]
    by_id = {q.product_id: q.message for q in report.quarantined}
    assert f"resolves to {secret}, outside the allowed roots ({export.resolve()})" in by_id["link"]
    assert "--asset-root" in by_id["abs"]
    touched = {os.path.realpath(p) for p in opened}
    for forbidden in ("/etc/passwd", "/etc/hostname", str(secret)):
        assert forbidden not in touched, f"{forbidden} was opened"


def test_an_operator_root_lets_a_trusted_folder_in(tmp_path: Path, export: Path, family) -> None:
    shared = tmp_path / "shared-assets"
    shared.mkdir()
    (shared / "x.glb").write_bytes(family[0][1])
    rows = [{"product_id": "x", "asset_uri": str(shared / "x.glb")}]
    manifest = _manifest(export, rows)
    refused = ingest_manifest(manifest)
    assert [q.reason for q in refused.quarantined] == ["outside_roots"]
    assert len(ingest_manifest(manifest, asset_roots=[str(shared)]).accepted) == 1
    os.environ["GLASSFINDER_ASSET_ROOTS"] = f"file://{shared}"
    try:
        assert len(ingest_manifest(manifest).accepted) == 1  # $GLASSFINDER_ASSET_ROOTS too
    finally:
        del os.environ["GLASSFINDER_ASSET_ROOTS"]


def test_devices_fifos_and_directories_are_refused_unread(tmp_path: Path, export: Path, opened) -> None:
    os.mkfifo(export / "assets" / "pipe.glb")  # opening it for reading would block forever
    (export / "assets" / "dir.glb").mkdir()
    rows = [
        {"product_id": "zero", "asset_uri": "/dev/zero"},
        {"product_id": "urandom", "asset_uri": "file:///dev/urandom"},
        {"product_id": "fifo", "asset_uri": "assets/pipe.glb"},
        {"product_id": "dir", "asset_uri": "assets/dir.glb"},
    ]
    manifest = _manifest(export, rows)
    opened.clear()
    report = ingest_manifest(manifest, asset_roots=["/dev"])
    assert {q.product_id: q.reason for q in report.quarantined} == {
        "zero": "not_a_file",
        "urandom": "not_a_file",
        "fifo": "not_a_file",
        "dir": "not_a_file",
    }
    messages = {q.product_id: q.message for q in report.quarantined}
    assert "/dev/zero is a character device, expected a regular file" in messages["zero"]
    assert "is a FIFO" in messages["fifo"] and "is a directory" in messages["dir"]
    assert not {"/dev/zero", "/dev/urandom", str(export / "assets" / "pipe.glb")} & set(opened)


def test_files_over_the_budget_are_refused_without_reading(tmp_path: Path, export: Path, opened) -> None:
    huge = export / "assets" / "huge.glb"
    with open(huge, "wb") as fh:  # 8 GiB, sparse: costs no disk
        fh.truncate(8 * 1024**3)
    rows = [{"product_id": "huge", "asset_uri": "assets/huge.glb"}, *_good_rows(1)]
    manifest = _manifest(export, rows)
    opened.clear()
    report = ingest_manifest(manifest, max_asset_bytes=1024 * 1024)
    (q,) = report.quarantined
    assert (
        q.reason == "too_large"
        and "8,589,934,592 bytes, more than the asset budget of 1,048,576" in q.message
    )
    assert str(huge) not in opened
    assert [r["product_id"] for r in report.accepted] == ["P0"]  # the good asset still fits


def test_a_stream_past_the_budget_stops_one_chunk_past_it(tmp_path: Path) -> None:
    """What holds when a size cannot be trusted (a file growing while read, a lying server):
    /dev/zero never ends, and the read stops just past the budget."""
    roots = AssetRoots.for_manifest(LocalStore(tmp_path), "m.json", max_bytes=4 * 1024 * 1024)
    with open("/dev/zero", "rb", buffering=0) as fh, pytest.raises(AssetSourceError) as err:
        roots._read_bounded("/dev/zero", fh, "/dev/zero")
    assert err.value.reason == "too_large" and "stopped reading" in str(err.value)


_PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from glassfinder.catalog.ingest import ingest_manifest
    from glassfinder.store import LocalStore
    from glassfinder.catalog.sources import AssetRoots

    def status_kib(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])

    mode, manifest, store, budget = sys.argv[1:5]
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak (VmHWM) to the current RSS: the imports' peak does not count
    before = status_kib("VmRSS")
    if mode == "ingest":
        report = ingest_manifest(manifest, dest=LocalStore(store), asset_roots=["/dev"],
                                 max_asset_bytes=int(budget))
        out = report.summary()["reasons"]
    else:
        roots = AssetRoots.for_manifest(LocalStore(store), "m.json", max_bytes=int(budget))
        try:
            with open("/dev/zero", "rb", buffering=0) as fh:
                roots._read_bounded("/dev/zero", fh, "/dev/zero")
        except Exception as exc:
            out = exc.reason
    after = status_kib("VmHWM")
    print(json.dumps({"out": out, "before_kib": before, "peak_kib": after}))
    """
)


def _peak(mode: str, manifest: str, store: Path, budget: int) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, mode, manifest, str(store), str(budget)],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=True,
    )  # fmt: skip
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


def test_peak_memory_stays_bounded_on_dev_zero_and_huge_files(tmp_path: Path, export: Path) -> None:
    """The row that once grew `catalog ingest` to 22.7 GB: measured in a fresh process."""
    with open(export / "assets" / "huge.glb", "wb") as fh:
        fh.truncate(8 * 1024**3)
    rows = [
        {"product_id": "zero", "asset_uri": "/dev/zero"},
        {"product_id": "huge", "asset_uri": "assets/huge.glb"},
        *_good_rows(1),
    ]
    manifest = _manifest(export, rows)
    ingest = _peak("ingest", manifest, tmp_path / "store", 1024 * 1024)
    assert ingest["out"] == {"not_a_file": 1, "too_large": 1}
    assert ingest["peak_kib"] - ingest["before_kib"] < 200 * 1024  # parsing one good asset
    budget = 64 * 1024 * 1024
    stream = _peak("stream", manifest, tmp_path / "other", budget)
    assert stream["out"] == "too_large"
    grown_kib = stream["peak_kib"] - stream["before_kib"]
    # the budget plus one 1 MiB chunk, plus a few MiB of interpreter noise
    assert grown_kib < budget // 1024 + 4 * 1024, f"grew {grown_kib} KiB for a {budget} byte budget"
    print(f"peak RSS: ingest +{ingest['peak_kib'] - ingest['before_kib']} KiB; /dev/zero stream "
          f"+{grown_kib} KiB for a {budget // 2**20} MiB budget")  # fmt: skip


def test_s3_keys_must_stay_under_the_export_prefix(s3_env: S3Store, family) -> None:
    bucket = s3_env  # reachable through the environment, as the pipeline reaches it
    export = S3Store(bucket.bucket, "shop/export")
    other = S3Store(bucket.bucket, "shop/private")
    export.put("assets/a.glb", family[0][1])
    other.put("b.glb", family[1][1])
    export.put("assets/big.glb", b"x" * (3 * 1024 * 1024))
    rows = [
        {"product_id": "rel", "asset_uri": "assets/a.glb"},
        {"product_id": "abs-in", "asset_uri": f"s3://{bucket.bucket}/shop/export/assets/a.glb"},
        {"product_id": "fragment", "asset_uri": f"s3://{bucket.bucket}/shop/export/assets/a.glb#x"},
        {"product_id": "abs-out", "asset_uri": f"s3://{bucket.bucket}/shop/private/b.glb"},
        {"product_id": "sneaky", "asset_uri": f"s3://{bucket.bucket}/shop/export/../private/b.glb"},
        {"product_id": "prefix-lookalike", "asset_uri": f"s3://{bucket.bucket}/shop/export-2/b.glb"},
        {"product_id": "big", "asset_uri": "assets/big.glb"},
    ]
    export.put("manifest.json", json.dumps(rows).encode())
    report = ingest_manifest(f"{export.uri}/manifest.json", max_asset_bytes=2 * 1024 * 1024)
    assert {q.product_id: q.reason for q in report.quarantined} == {
        "fragment": "bad_uri",
        "abs-out": "outside_roots",
        "sneaky": "outside_roots",
        "prefix-lookalike": "outside_roots",
        "big": "too_large",
    }
    assert [r["product_id"] for r in report.accepted] == ["rel", "abs-in"]


def test_triangle_and_byte_budgets_must_be_positive(tmp_path: Path, export: Path) -> None:
    manifest = _manifest(export, _good_rows(1))
    for bad in (0, -1):
        with pytest.raises(GlassFinderError, match=f"max_triangles must be a positive number.*got {bad}"):
            ingest_manifest(manifest, max_triangles=bad)
        with pytest.raises(GlassFinderError, match="max_asset_bytes must be between 1 and"):
            ingest_manifest(manifest, max_asset_bytes=bad)
    with pytest.raises(GlassFinderError, match=r"max_shrink_fraction must be between 0 and 1, got 1\.5"):
        ingest_manifest(manifest, dest=LocalStore(tmp_path / "s"), max_shrink_fraction=1.5)


# --- 2. an ingest that accepts nothing empties the catalogue --------------------------------------
@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.json", ""),
        ("header.csv", "product_id,asset_uri,kind\n"),
        ("array.json", "[]"),
        ("all-bad.json", json.dumps([{"product_id": "x", "asset_uri": "/etc/passwd"},
                                     {"product_id": "y", "asset_uri": "assets/nowhere.glb"}])),
    ],
    ids=["zero-byte-json", "header-only-csv", "empty-array", "every-row-bad"],
)  # fmt: skip
def test_an_export_with_no_valid_product_leaves_the_catalog(
    catalog: LocalStore, export: Path, name: str, content: str
) -> None:
    (export / name).write_text(content)
    before = _snapshot(catalog)
    with pytest.raises(
        CatalogShrinkError, match=r"yielded no valid product .* left as it was \(4 products\)"
    ):
        ingest_manifest(str(export / name), dest=catalog)
    assert _snapshot(catalog) == before
    assert len(read_catalog(catalog)[0]) == 4


def test_removing_too_much_of_the_catalog_needs_a_recorded_reason(catalog: LocalStore, export: Path) -> None:
    half = _manifest(export, _good_rows(2), "half.json")
    before = _snapshot(catalog)
    with pytest.raises(
        CatalogShrinkError, match=r"would remove 2 of the catalogue's 4 products \(50%"
    ) as err:
        ingest_manifest(half, dest=catalog)
    assert "--allow-shrink with --reason" in str(err.value)  # each audience is told its own way out
    assert "`glassfinder catalog ingest --allow-shrink" in err.value.speak("dag")
    assert "$GLASSFINDER_MAX_CATALOGUE_SHRINK in the workers' environment" in err.value.speak("dag")
    assert _snapshot(catalog) == before
    assert ingest_manifest(half, dest=catalog, max_shrink_fraction=0.5).manifest_changed
    assert len(read_catalog(catalog)[0]) == 2
    empty = _manifest(export, [], "empty.json")
    report = ingest_manifest(empty, dest=catalog, allow_shrink_reason="shop closes its optical range")
    assert read_catalog(catalog)[0] == [] and report.shrink is not None
    (record,) = [i.key for i in catalog.list("catalog/overrides/")]
    body = json.loads(catalog.get(record))
    assert body["allowed_reason"] == "shop closes its optical range"
    assert (body["before"], body["after"]) == (2, 0)


def test_cli_refuses_bad_budgets_and_a_shrink_without_reason(
    catalog: LocalStore, export: Path, capsys
) -> None:
    from glassfinder.catalog import sources
    from glassfinder.cli import MAX_ASSET_BYTES_LIMIT, MAX_TOP_K, main
    from glassfinder.search import query

    assert (MAX_TOP_K, MAX_ASSET_BYTES_LIMIT) == (query.MAX_TOP_K, sources.MAX_ASSET_BYTES_LIMIT)
    manifest = _manifest(export, [], "empty.json")
    store = ["--store", catalog.uri]
    for flag, value in (("--max-triangles", "0"), ("--max-triangles", "-1"), ("--max-asset-bytes", "0")):
        with pytest.raises(SystemExit) as exit_:
            main(["catalog", "ingest", manifest, flag, value, *store])
        assert exit_.value.code == 2
        assert "must be between 1" in capsys.readouterr().err
    assert main(["catalog", "ingest", manifest, *store]) == 1
    err = capsys.readouterr()
    assert "yielded no valid product" in err.err and "report:" in err.out  # the report is still written
    assert main(["catalog", "ingest", manifest, "--allow-shrink", *store]) == 1
    assert "--allow-shrink needs --reason" in capsys.readouterr().err
    assert len(read_catalog(catalog)[0]) == 4
    assert main(["catalog", "ingest", manifest, "--allow-shrink", "--reason", "test", *store]) == 0
    assert read_catalog(catalog)[0] == []


# --- 4. tampering is half-detected ----------------------------------------------------------------
@pytest.fixture
def published(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "index-store")
    manifest_uri, _ = make_catalog(store, 6)
    publish(store, built_from(store, manifest_uri))
    return store


def _edit_manifest(store: LocalStore, version: int, change) -> None:
    key = f"indexes/catalog/v{version}/{MANIFEST_FILE}"
    manifest = json.loads(store.get(key))
    change(manifest)
    path = store.root / key
    path.chmod(0o644)
    path.write_bytes(json.dumps(manifest, indent=2, sort_keys=True).encode())


def test_an_edited_manifest_is_refused_from_the_pointer_down(published: LocalStore) -> None:
    assert IndexReader(published, "catalog").version == 1
    _edit_manifest(published, 1, lambda m: m.update(factory="Flat-but-edited"))
    with pytest.raises(
        IndexCorruptError, match=r"manifest.json has sha256 \w+, CURRENT records \w+; refusing"
    ):
        IndexReader(published, "catalog")
    current = json.loads(published.get("indexes/catalog/CURRENT"))
    del current["manifest_sha256"]  # a pointer that cannot be verified is not served either
    published.put("indexes/catalog/CURRENT", json.dumps(current).encode())
    with pytest.raises(IndexCorruptError, match="CURRENT must record the manifest's sha256"):
        IndexReader(published, "catalog")


def test_a_replaced_index_file_with_its_checksum_updated_is_refused(published: LocalStore) -> None:
    """The attack a per-file checksum alone cannot see: swap the file, fix its manifest entry."""
    import hashlib

    original = published.get(f"indexes/catalog/v1/{INDEX_FILE}")
    forged = original[:-8] + bytes(b ^ 0xFF for b in original[-8:])  # the attacker's vectors
    (published.root / f"indexes/catalog/v1/{INDEX_FILE}").write_bytes(forged)
    digest = hashlib.sha256(forged).hexdigest()
    _edit_manifest(published, 1, lambda m: m["files"][INDEX_FILE].update(sha256=digest, size=len(forged)))
    fetch_verified(published, "catalog", 1)  # consistent in itself...
    with pytest.raises(IndexCorruptError, match="refusing an edited manifest"):
        IndexReader(published, "catalog")  # ...but not with what CURRENT recorded


def test_signed_manifests_refuse_a_publisher_without_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "signed")
    manifest_uri, _ = make_catalog(store, 6)
    built = built_from(store, manifest_uri)
    monkeypatch.setenv(signing.KEY_ENV, "k" * 32)
    publish(store, built)
    assert store.exists(f"indexes/catalog/v1/{MANIFEST_FILE}{signing.SIGNATURE_SUFFIX}")
    assert IndexReader(store, "catalog").version == 1
    monkeypatch.delenv(signing.KEY_ENV)  # a writer with store access but no key
    publish(store, built, force_reason="intruder")
    monkeypatch.setenv(signing.KEY_ENV, "k" * 32)
    with pytest.raises(IndexSignatureError, match=r"v2 .* is not signed, but readers hold a signing key"):
        IndexReader(store, "catalog")
    monkeypatch.setenv(signing.KEY_ENV, "another key of 32 bytes........")
    with pytest.raises(IndexSignatureError, match="HMAC does not match"):
        IndexReader(store, "catalog", version=1)
    monkeypatch.setenv(signing.KEY_ENV, "short")
    with pytest.raises(IndexSignatureError, match="at least 16 bytes"):
        IndexReader(store, "catalog", version=1)


# --- 5. a stalled object store is silent for five minutes -----------------------------------------
@pytest.fixture(scope="module")
def pausable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A SeaweedFS of this module's own, since pausing the shared one would stall other tests."""
    server = new_server(
        tmp_path_factory.mktemp("weed-pause"), access_key="gf-pause", secret_key="gf-pause-secret"
    )
    server.start()
    try:
        yield server
    finally:
        server.resume()
        server.stop()


@contextlib.contextmanager
def paused(server: SeaweedServer) -> Iterator[None]:
    server.pause()
    try:
        yield
    finally:
        server.resume()


def test_a_paused_store_is_a_clear_error_within_the_deadline(
    pausable: SeaweedServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = new_bucket_store(pausable, deadline_s=1.5, read_timeout_s=0.5, max_attempts=5)
    store.put("kept", b"written before the stall")
    caplog.set_level(logging.WARNING, "glassfinder.store.s3")
    with paused(pausable):
        for op in (lambda: store.head("kept"), lambda: store.get("kept"), lambda: store.put("new", b"x")):
            start = time.monotonic()
            with pytest.raises(
                StoreUnavailableError, match=r"did not complete .* within its deadline of 1\.5 s"
            ):
                op()
            assert time.monotonic() - start < 2.5
    assert any("retry (attempt 2)" in r.getMessage() for r in caplog.records), "retries are logged"
    assert store.get("kept") == b"written before the stall"  # nothing lost
    assert store.get("new") == b"x" if store.exists("new") else True  # whole or absent, never a part


def test_an_ingest_from_a_paused_store_stops_and_keeps_the_catalog(
    pausable: SeaweedServer, family, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stalled store is not a bad asset: the ingest fails within the deadline instead of
    quarantining every row (and then refusing the empty result)."""
    for name, value in pausable.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GLASSFINDER_S3_DEADLINE_S", "1.5")
    monkeypatch.setenv("GLASSFINDER_S3_READ_TIMEOUT_S", "0.5")
    assets = S3Store(new_bucket_store(pausable).bucket, "assets")
    assets.put("a.glb", family[0][1])
    local = tmp_path / "export"
    local.mkdir()
    manifest = _manifest(local, [{"product_id": "a", "asset_uri": f"s3://{assets.bucket}/assets/a.glb"}])
    dest = LocalStore(tmp_path / "store")
    assert len(ingest_manifest(manifest, dest=dest, asset_roots=[assets.uri]).accepted) == 1
    before = _snapshot(dest)
    start = time.monotonic()
    with paused(pausable), pytest.raises(StoreUnavailableError, match=r"within its deadline of 1\.5 s"):
        ingest_manifest(manifest, dest=dest, asset_roots=[assets.uri])
    assert time.monotonic() - start < 5
    assert _snapshot(dest) == before


@pytest.mark.slow  # waits out the whole default deadline (20 s)
def test_the_default_deadline_bounds_a_stall_well_under_a_minute(pausable: SeaweedServer) -> None:
    defaults = S3Config()
    assert defaults.deadline_s <= 30 and defaults.max_attempts * defaults.read_timeout_s > defaults.deadline_s
    store = S3Store(new_bucket_store(pausable).bucket, config=s3_config(pausable, **_defaults_of(defaults)))
    store.put("k", b"v")
    with paused(pausable):
        start = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=r"within its deadline of 20\.0 s"):
            store.head("k")
        elapsed = time.monotonic() - start
    print(f"paused SeaweedFS -> StoreUnavailableError in {elapsed:.1f} s with the default deadline")
    assert defaults.deadline_s - 0.5 < elapsed < defaults.deadline_s + 1.5


def _defaults_of(config: S3Config) -> dict:
    keep = ("max_attempts", "connect_timeout_s", "read_timeout_s", "deadline_s")
    return {k: getattr(config, k) for k in keep}


def test_store_budgets_are_validated() -> None:
    for bad in (
        {"deadline_s": 0},
        {"read_timeout_s": -1},
        {"max_attempts": 0},
        {"slow_transfer_bytes_per_s": 0},
    ):
        with pytest.raises(StoreError, match="S3Config"):
            S3Config(**bad)  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="GLASSFINDER_S3_DEADLINE_S must be a float"):
        S3Config.from_env({"GLASSFINDER_S3_DEADLINE_S": "soon"})


def test_cli_search_refuses_a_huge_photo_file_unread(tmp_path: Path) -> None:
    from glassfinder.errors import QueryRefusedError
    from glassfinder.search.query import read_photo

    huge = tmp_path / "huge.png"
    with open(huge, "wb") as fh:
        fh.truncate(8 * 1024**3)
    with pytest.raises(QueryRefusedError) as err:
        read_photo(huge)
    assert err.value.reason == "upload_too_large" and "larger than 67,108,864 bytes" in err.value.detail
