"""Tests for marseval.data.download against a local, misbehaving HTTP server.

Only 127.0.0.1 is ever contacted; proxy variables are cleared so requests
cannot route the traffic elsewhere.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import local_http_server

from marseval.data import download
from marseval.data.download import (
    DownloadError,
    download_zenodo_record,
    fetch_file,
    safe_extract,
    zenodo_record_files,
)

DATA = random.Random(1234).randbytes(300_000)
FAST = {"backoff": 0, "timeout": 5}


def md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def corrupt(data: bytes) -> bytes:
    mid = len(data) // 2
    return data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]


# --------------------------------------------------------------------------- server


class FakeServer:
    """State shared with the handler; tests flip the misbehaviour switches."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.files: dict[str, bytes] = {}
        self.json: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.drop_after: dict[str, int] = {}  # path -> bytes sent before dropping (once)
        self.fail_500: dict[str, int] = {}  # path -> number of 500 answers left
        self.corrupt: set[str] = set()
        self.ignore_range = False
        self.range_cap: int | None = None  # serve at most this many bytes per 206
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add_json(self, path: str, obj: object) -> None:
        self.json[path] = json.dumps(obj).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        st: FakeServer = self.server.state  # type: ignore[attr-defined]
        path = urlsplit(self.path).path
        rng = self.headers.get("Range")
        with st.lock:
            st.requests.append((path, rng))
            fail = st.fail_500.get(path, 0)
            if fail:
                st.fail_500[path] = fail - 1
            drop = st.drop_after.pop(path, None)
        if fail:
            return self._send(500, b"simulated failure")
        if path in st.json:
            return self._send(200, st.json[path], {"Content-Type": "application/json"})
        if path not in st.files:
            return self._send(404, b"not found")

        data = st.files[path]
        if path in st.corrupt:
            data = corrupt(data)
        status, start, end = 200, 0, len(data) - 1
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m and not st.ignore_range:
            start = int(m.group(1))
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            end = min(int(m.group(2)), len(data) - 1) if m.group(2) else len(data) - 1
            if st.range_cap is not None:
                end = min(end, start + st.range_cap - 1)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        body = data[start : end + 1]

        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if drop is not None:
            # Promise the full length, deliver a prefix, then hang up.
            self.wfile.write(body[:drop])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MARSEVAL_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def server() -> Iterator[FakeServer]:
    state = FakeServer()
    with local_http_server(_Handler, state=state) as port:
        state.port = port
        yield state


def part_of(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


# --------------------------------------------------------------------------- fetch_file


def test_plain_download_verifies_md5(server: FakeServer, tmp_path: Path) -> None:
    server.files["/f.bin"] = DATA
    dest = tmp_path / "sub" / "f.bin"
    out = fetch_file(server.url("/f.bin"), dest, checksum=md5(DATA), **FAST)
    assert out == dest
    assert dest.read_bytes() == DATA
    assert not part_of(dest).exists()
    assert server.requests == [("/f.bin", None)]


def test_sha256_and_existing_dest_skips_network(server: FakeServer, tmp_path: Path) -> None:
    server.files["/f.bin"] = DATA
    dest = tmp_path / "f.bin"
    fetch_file(server.url("/f.bin"), dest, checksum=sha256(DATA), **FAST)
    assert len(server.requests) == 1
    fetch_file(server.url("/f.bin"), dest, checksum=sha256(DATA), **FAST)
    assert len(server.requests) == 1  # verified local copy, no request

    dest.write_bytes(b"stale")  # wrong content -> must be replaced
    fetch_file(server.url("/f.bin"), dest, checksum=sha256(DATA), **FAST)
    assert len(server.requests) == 2
    assert dest.read_bytes() == DATA


def test_checksum_mismatch_raises_and_cleans_up(server: FakeServer, tmp_path: Path) -> None:
    server.files["/f.bin"] = DATA
    server.corrupt.add("/f.bin")
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError) as ei:
        fetch_file(server.url("/f.bin"), dest, checksum=md5(DATA), **FAST)
    msg = str(ei.value)
    assert "f.bin" in msg
    assert hashlib.md5(DATA).hexdigest() in msg
    assert hashlib.md5(corrupt(DATA)).hexdigest() in msg
    assert not dest.exists()
    assert not part_of(dest).exists()
    assert len(server.requests) == 1  # fresh download mismatch: no retry


def test_interrupted_download_resumes_with_range(server: FakeServer, tmp_path: Path) -> None:
    server.files["/f.bin"] = DATA
    server.drop_after["/f.bin"] = 100_000
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match=re.escape("f.bin")):
        fetch_file(server.url("/f.bin"), dest, checksum=md5(DATA), retries=0, **FAST)
    part = part_of(dest)
    assert part.read_bytes() == DATA[:100_000]
    assert not dest.exists()

    fetch_file(server.url("/f.bin"), dest, checksum=md5(DATA), retries=0, **FAST)
    assert server.requests == [("/f.bin", None), ("/f.bin", "bytes=100000-")]
    assert dest.read_bytes() == DATA
    assert not part.exists()


def test_drop_is_retried_and_resumed_within_one_call(server: FakeServer, tmp_path: Path) -> None:
    server.files["/f.bin"] = DATA
    server.drop_after["/f.bin"] = 12_345
    dest = tmp_path / "f.bin"
    fetch_file(server.url("/f.bin"), dest, checksum=md5(DATA), retries=1, **FAST)
    assert server.requests == [("/f.bin", None), ("/f.bin", "bytes=12345-")]
    assert dest.read_bytes() == DATA


def test_server_ignoring_range_restarts_from_zero(server: FakeServer, tmp_path: Path) -> None:
    server.files["/f.bin"] = DATA
    server.ignore_range = True
    dest = tmp_path / "f.bin"
    part_of(dest).write_bytes(DATA[:5000])
    fetch_file(server.url("/f.bin"), dest, checksum=md5(DATA), **FAST)
    assert server.requests == [("/f.bin", "bytes=5000-")]
    assert dest.read_bytes() == DATA  # not DATA[:5000] + DATA


def test_short_206_ranges_are_continued(server: FakeServer, tmp_path: Path) -> None:
    server.files["/f.bin"] = DATA
    server.range_cap = 100_000
    dest = tmp_path / "f.bin"
    part_of(dest).write_bytes(DATA[:1000])
    fetch_file(server.url("/f.bin"), dest, retries=0, **FAST)  # no checksum: size must do
    assert [r for _, r in server.requests] == [
        "bytes=1000-",
        "bytes=101000-",
        "bytes=201000-",
    ]
    assert dest.read_bytes() == DATA


def test_416_means_part_is_complete(server: FakeServer, tmp_path: Path) -> None:
    server.files["/f.bin"] = DATA
    dest = tmp_path / "f.bin"
    part_of(dest).write_bytes(DATA)
    fetch_file(server.url("/f.bin"), dest, checksum=md5(DATA), **FAST)
    assert server.requests == [("/f.bin", f"bytes={len(DATA)}-")]
    assert dest.read_bytes() == DATA


def test_bad_resumed_prefix_retries_once_from_scratch(server: FakeServer, tmp_path: Path) -> None:
    server.files["/f.bin"] = DATA
    dest = tmp_path / "f.bin"
    part_of(dest).write_bytes(b"x" * 1000)  # stale garbage from some older run
    fetch_file(server.url("/f.bin"), dest, checksum=md5(DATA), **FAST)
    assert server.requests == [("/f.bin", "bytes=1000-"), ("/f.bin", None)]
    assert dest.read_bytes() == DATA


def test_resumed_mismatch_gives_up_after_one_fresh_try(server: FakeServer, tmp_path: Path) -> None:
    server.files["/f.bin"] = DATA
    server.corrupt.add("/f.bin")
    dest = tmp_path / "f.bin"
    part_of(dest).write_bytes(DATA[:1000])
    with pytest.raises(DownloadError, match="checksum mismatch"):
        fetch_file(server.url("/f.bin"), dest, checksum=md5(DATA), retries=5, **FAST)
    assert server.requests == [("/f.bin", "bytes=1000-"), ("/f.bin", None)]
    assert not dest.exists() and not part_of(dest).exists()


def test_500_then_success(server: FakeServer, tmp_path: Path) -> None:
    server.files["/f.bin"] = DATA
    server.fail_500["/f.bin"] = 2
    dest = tmp_path / "f.bin"
    fetch_file(server.url("/f.bin"), dest, checksum=md5(DATA), retries=2, **FAST)
    assert [p for p, _ in server.requests] == ["/f.bin"] * 3
    assert dest.read_bytes() == DATA


def test_persistent_500_gives_up(server: FakeServer, tmp_path: Path) -> None:
    server.files["/f.bin"] = DATA
    server.fail_500["/f.bin"] = 10
    dest = tmp_path / "f.bin"
    url = server.url("/f.bin")
    with pytest.raises(DownloadError) as ei:
        fetch_file(url, dest, checksum=md5(DATA), retries=2, **FAST)
    assert url in str(ei.value) and "500" in str(ei.value)
    assert len(server.requests) == 3
    assert not dest.exists()


def test_404_is_not_retried(server: FakeServer, tmp_path: Path) -> None:
    url = server.url("/missing.bin")
    with pytest.raises(DownloadError, match="404"):
        fetch_file(url, tmp_path / "m.bin", retries=3, **FAST)
    assert server.requests == [("/missing.bin", None)]


def test_malformed_checksum_rejected(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=re.escape("crc32")):
        fetch_file("http://127.0.0.1:9/x", tmp_path / "x", checksum="crc32:abcd")


# --------------------------------------------------------------------------- zenodo metadata


def zenodo_payload(server: FakeServer, entries: dict[str, bytes], record_id: str = "123") -> dict:
    files = []
    for i, (key, data) in enumerate(entries.items()):
        # Mix link styles: current Zenodo uses links.self, RDM uses links.content.
        link_name = "self" if i % 2 == 0 else "content"
        files.append(
            {
                "id": f"id-{i}",
                "key": key,
                "size": len(data),
                "checksum": md5(data),
                "links": {link_name: server.url(f"/files/{record_id}/{key}")},
            }
        )
    return {"id": int(record_id), "metadata": {"title": "t"}, "files": files}


def test_zenodo_record_files_parses_json(server: FakeServer) -> None:
    entries = {"a.zip": b"zipzip", "b.csv": b"1,2\n"}
    server.add_json("/api/records/123", zenodo_payload(server, entries))
    got = zenodo_record_files("123", api_base=server.url("/api"))
    assert got == [
        {
            "key": "a.zip",
            "url": server.url("/files/123/a.zip"),
            "checksum": md5(b"zipzip"),
            "size": 6,
        },
        {
            "key": "b.csv",
            "url": server.url("/files/123/b.csv"),
            "checksum": md5(b"1,2\n"),
            "size": 4,
        },
    ]
    assert server.requests == [("/api/records/123", None)]


@pytest.mark.parametrize(
    "body",
    [b"{not json", json.dumps({"id": 5}).encode(), json.dumps({"files": [{"key": "x"}]}).encode()],
    ids=["invalid-json", "no-files", "no-link"],
)
def test_zenodo_record_files_malformed(server: FakeServer, body: bytes) -> None:
    server.json["/api/records/777"] = body
    with pytest.raises(DownloadError, match="777"):
        zenodo_record_files("777", api_base=server.url("/api"))


def test_zenodo_record_files_rdm_shape(server: FakeServer) -> None:
    entry = {"key": "x.tif", "size": 3, "checksum": md5(b"abc")}
    entry["links"] = {"content": server.url("/files/8/x.tif")}
    server.add_json("/api/records/8", {"files": {"enabled": True, "entries": {"x.tif": entry}}})
    got = zenodo_record_files("8", api_base=server.url("/api"))
    assert got == [
        {"key": "x.tif", "url": server.url("/files/8/x.tif"), "checksum": md5(b"abc"), "size": 3}
    ]


def test_zenodo_record_files_http_error(server: FakeServer) -> None:
    with pytest.raises(DownloadError, match="404.*999|999.*404"):
        zenodo_record_files("999", api_base=server.url("/api"))


def test_zenodo_record_files_rejects_unsafe_key(server: FakeServer) -> None:
    server.add_json("/api/records/1", zenodo_payload(server, {"../x.txt": b"x"}, "1"))
    with pytest.raises(DownloadError, match="unsafe"):
        zenodo_record_files("1", api_base=server.url("/api"))


# --------------------------------------------------------------------------- end to end


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def make_tar(members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return buf.getvalue()


def link_info(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def serve_record(server: FakeServer, record_id: str, entries: dict[str, bytes]) -> None:
    for key, data in entries.items():
        server.files[f"/files/{record_id}/{key}"] = data
    server.add_json(f"/api/records/{record_id}", zenodo_payload(server, entries, record_id))


def test_download_zenodo_record_end_to_end(server: FakeServer, tmp_path: Path) -> None:
    zip_bytes = make_zip({"images/a.txt": b"alpha", "images/sub/b.txt": b"beta"})
    tgz_bytes = make_tar([("labels/c.txt", b"gamma"), ("labels/d.txt", b"delta")])
    entries = {"images.zip": zip_bytes, "labels.tar.gz": tgz_bytes, "README.md": b"# readme\n"}
    serve_record(server, "4242", entries)
    server.drop_after["/files/4242/labels.tar.gz"] = 40  # exercise resume inside the record

    dest = tmp_path / "dataset"
    out = download_zenodo_record("4242", dest, api_base=server.url("/api"), backoff=0)
    assert out == dest
    assert (dest / "images" / "a.txt").read_bytes() == b"alpha"
    assert (dest / "images" / "sub" / "b.txt").read_bytes() == b"beta"
    assert (dest / "labels" / "c.txt").read_bytes() == b"gamma"
    assert (dest / "labels" / "d.txt").read_bytes() == b"delta"
    assert (dest / "README.md").read_bytes() == b"# readme\n"
    assert (dest / "_downloads" / "labels.tar.gz").read_bytes() == tgz_bytes
    assert ("/files/4242/labels.tar.gz", "bytes=40-") in server.requests

    marker = json.loads((dest / ".download_complete.json").read_text())
    assert marker["record_id"] == "4242"
    assert {f["key"]: f["checksum"] for f in marker["files"]} == {
        k: md5(v) for k, v in entries.items()
    }
    assert {f["key"]: f["extracted"] for f in marker["files"]} == {
        "images.zip": True,
        "labels.tar.gz": True,
        "README.md": False,
    }
    leftovers = [p.name for p in dest.rglob("*") if p.name.endswith((".part", ".tmp"))]
    assert leftovers == []

    # A completed record is not fetched again.
    n = len(server.requests)
    download_zenodo_record("4242", dest, api_base=server.url("/api"), backoff=0)
    assert len(server.requests) == n


def test_download_zenodo_record_file_selection(server: FakeServer, tmp_path: Path) -> None:
    entries = {"big.zip": make_zip({"x.txt": b"x"}), "small.txt": b"small"}
    serve_record(server, "55", entries)
    dest = tmp_path / "d"
    download_zenodo_record("55", dest, api_base=server.url("/api"), files=["small.txt"], backoff=0)
    assert (dest / "small.txt").read_bytes() == b"small"
    assert not (dest / "x.txt").exists()
    assert "/files/55/big.zip" not in [p for p, _ in server.requests]

    with pytest.raises(DownloadError, match=re.escape("nope.bin")):
        download_zenodo_record(
            "55", tmp_path / "e", api_base=server.url("/api"), files=["nope.bin"]
        )


def test_download_zenodo_record_no_extract(server: FakeServer, tmp_path: Path) -> None:
    zip_bytes = make_zip({"x.txt": b"x"})
    serve_record(server, "56", {"a.zip": zip_bytes})
    dest = tmp_path / "d"
    download_zenodo_record("56", dest, api_base=server.url("/api"), extract=False, backoff=0)
    assert (dest / "a.zip").read_bytes() == zip_bytes
    assert not (dest / "x.txt").exists()


def test_download_zenodo_record_bad_checksum_writes_no_marker(
    server: FakeServer, tmp_path: Path
) -> None:
    serve_record(server, "57", {"a.txt": b"payload"})
    server.corrupt.add("/files/57/a.txt")
    dest = tmp_path / "d"
    with pytest.raises(DownloadError, match=re.escape("a.txt")):
        download_zenodo_record("57", dest, api_base=server.url("/api"), backoff=0)
    assert not (dest / ".download_complete.json").exists()
    assert not (dest / "a.txt").exists()


@pytest.mark.parametrize("var", ["MARSEVAL_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_env_blocks_network(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, var: str
) -> None:
    serve_record(server, "9", {"a.txt": b"a"})
    monkeypatch.setenv(var, "1")
    with pytest.raises(DownloadError, match="disabled"):
        download_zenodo_record("9", tmp_path / "d", api_base=server.url("/api"))
    with pytest.raises(DownloadError, match="disabled"):
        fetch_file(server.url("/files/9/a.txt"), tmp_path / "a.txt")
    assert server.requests == []
    assert not (tmp_path / "d" / "_downloads").exists()


# --------------------------------------------------------------------------- safe_extract


def assert_untouched(tmp_path: Path, target: Path, expected: set[str]) -> None:
    assert {p.name for p in target.iterdir()} == expected
    # No temporary extraction directory left behind next to target.
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_safe_extract_refuses_zip_traversal(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    archive.write_bytes(make_zip({"good.txt": b"good", "../evil.txt": b"evil"}))
    target = tmp_path / "out" / "inner"
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("keep")
    with pytest.raises(DownloadError) as ei:
        safe_extract(archive, target)
    assert "../evil.txt" in str(ei.value) and "evil.zip" in str(ei.value)
    assert_untouched(tmp_path, target, {"keep.txt"})
    assert not (tmp_path / "out" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_safe_extract_refuses_tar_absolute_path(tmp_path: Path) -> None:
    outside = tmp_path / "abs_evil.txt"
    archive = tmp_path / "abs.tar"
    archive.write_bytes(make_tar([("ok.txt", b"ok"), (str(outside), b"evil")], mode="w"))
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(DownloadError) as ei:
        safe_extract(archive, target)
    assert str(outside) in str(ei.value) and "abs.tar" in str(ei.value)
    assert_untouched(tmp_path, target, set())
    assert not outside.exists()


@pytest.mark.parametrize(
    ("members", "offender"),
    [
        ([link_info("escape", "../outside")], "escape"),
        ([link_info("escape", "/etc")], "escape"),
        ([link_info("d", ".."), ("d/pwned.txt", b"evil")], "'d'"),
        # Each link is lexically inside, but l2 resolves through l1 to the parent.
        ([link_info("l1", "."), link_info("l2", "l1/.."), ("l2/pwned.txt", b"evil")], "l2"),
        ([link_info("hard", "../outside", tarfile.LNKTYPE)], "hard"),
    ],
    ids=[
        "relative-symlink",
        "absolute-symlink",
        "write-through-symlink",
        "chained-symlink",
        "hardlink",
    ],
)
@pytest.mark.parametrize("data_filter", [True, False], ids=["with-filter", "own-checks-only"])
def test_safe_extract_refuses_tar_links_outside(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    members: list,
    offender: str,
    data_filter: bool,
) -> None:
    if not data_filter:
        # Our own checks must hold even where tarfile has no "data" filter.
        no_filter = {"filter": "fully_trusted"} if hasattr(tarfile, "data_filter") else {}
        monkeypatch.setattr(download, "_TAR_EXTRACT_KWARGS", no_filter)
    (tmp_path / "outside").write_text("secret")
    archive = tmp_path / "links.tar.gz"
    archive.write_bytes(make_tar([("ok.txt", b"ok"), *members]))
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(DownloadError) as ei:
        safe_extract(archive, target)
    assert "links.tar.gz" in str(ei.value)
    assert offender in str(ei.value)
    assert_untouched(tmp_path, target, set())
    assert (tmp_path / "outside").read_text() == "secret"
    assert not (tmp_path / "pwned.txt").exists()


@pytest.mark.parametrize(
    ("suffix", "mode"),
    [
        (".tar", "w"),
        (".tar.gz", "w:gz"),
        (".tgz", "w:gz"),
        (".tar.bz2", "w:bz2"),
        (".tar.xz", "w:xz"),
    ],
)
def test_safe_extract_tar_formats(tmp_path: Path, suffix: str, mode: str) -> None:
    archive = tmp_path / f"a{suffix}"
    archive.write_bytes(
        make_tar(
            [("top/x.txt", b"x-data"), ("top/y/z.bin", b"\x00\x01"), link_info("top/lnk", "x.txt")],
            mode,
        )
    )
    target = tmp_path / "out"
    target.mkdir()
    (target / "existing.txt").write_text("stay")
    got = safe_extract(archive, target)
    assert sorted(got) == sorted([target / "top/x.txt", target / "top/y/z.bin", target / "top/lnk"])
    assert (target / "top" / "x.txt").read_bytes() == b"x-data"
    assert (target / "top" / "y" / "z.bin").read_bytes() == b"\x00\x01"
    assert (target / "top" / "lnk").read_bytes() == b"x-data"  # inside symlink allowed
    assert (target / "existing.txt").read_text() == "stay"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_safe_extract_merges_into_existing_dirs(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"d/new.txt": b"new", "d/old.txt": b"replaced"}))
    target = tmp_path / "out"
    (target / "d").mkdir(parents=True)
    (target / "d" / "old.txt").write_text("old")
    (target / "d" / "other.txt").write_text("other")
    safe_extract(archive, target)
    assert (target / "d" / "new.txt").read_bytes() == b"new"
    assert (target / "d" / "old.txt").read_bytes() == b"replaced"
    assert (target / "d" / "other.txt").read_text() == "other"


def test_safe_extract_rejects_unknown_and_corrupt(tmp_path: Path) -> None:
    odd = tmp_path / "a.rar"
    odd.write_bytes(b"whatever")
    with pytest.raises(DownloadError, match=re.escape("a.rar")):
        safe_extract(odd, tmp_path / "out")
    bad = tmp_path / "b.zip"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(DownloadError, match=re.escape("b.zip")):
        safe_extract(bad, tmp_path / "out2")
    truncated = tmp_path / "c.tar.gz"
    truncated.write_bytes(make_tar([("big.bin", DATA)])[:2000])
    with pytest.raises(DownloadError, match=re.escape("c.tar.gz")):
        safe_extract(truncated, tmp_path / "out3")
    assert not any((tmp_path / p).exists() for p in ("out", "out2", "out3"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ------------------------------------------------------------- the download stage, end to end


def _zip_folder(folder: Path, prefix: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{prefix}/{path.relative_to(folder)}")
    return buffer.getvalue()


def test_zenodo_source_downloads_resumes_and_standardizes(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m marseval download --source zenodo` on a record served from 127.0.0.1."""
    import pandas as pd

    from marseval.cli import main
    from marseval.data.standardize import standardize
    from marseval.data.synthetic.generate import generate_benchmark
    from marseval.data.synthetic.writers import write_zenodo
    from marseval.registry import get_dataset

    spec = get_dataset("mb-frost_cls")
    raw = generate_benchmark(spec, seed=0, size=32, samples={"train": 12, "val": 4, "test": 4})
    write_zenodo(raw, spec, tmp_path / "layout")
    archive = _zip_folder(tmp_path / "layout", "frost_classification")
    serve_record(server, "777", {"frost_classification.zip": archive})
    server.drop_after["/files/777/frost_classification.zip"] = len(archive) // 3

    out = tmp_path / "raw" / "zenodo" / spec.name
    args = ["download", "--dataset", spec.name, "--source", "zenodo", "--out", str(out),
            "--options", json.dumps({"zenodo_record": "777", "zenodo_api": server.url("/api"),
                                     "retries": 0})]
    # first attempt: the connection drops mid-archive and no retries are allowed
    assert main(args) == 1
    assert "frost_classification.zip" in capsys.readouterr().err
    assert not out.exists()
    partial = list(tmp_path.rglob("*.zip.part"))
    assert len(partial) == 1 and partial[0].stat().st_size == len(archive) // 3

    # the rerun resumes from the partial file and publishes the raw folder
    assert main(args) == 0
    assert ("/files/777/frost_classification.zip", f"bytes={len(archive) // 3}-") in \
        server.requests
    assert not list(tmp_path.rglob("*.part"))

    meta = standardize(out, tmp_path / "std", spec.name, "zenodo", [0.5, 1.0], [1])
    assert meta["splits"] == {"train": 12, "val": 4, "test": 4}
    frame = pd.read_parquet(tmp_path / "std" / "samples.parquet").set_index("sample_id")
    assert {s.stem: s.label for s in raw.samples} == frame["label"].to_dict()


def test_zenodo_checksum_mismatch_fails_the_download_stage(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from marseval.cli import main

    serve_record(server, "778", {"data.zip": make_zip({"annotation.csv": b"x"})})
    server.corrupt.add("/files/778/data.zip")
    out = tmp_path / "raw"
    options = {"zenodo_record": "778", "zenodo_api": server.url("/api"), "retries": 0}
    assert main(["download", "--dataset", "mb-frost_cls", "--source", "zenodo", "--out",
                 str(out), "--options", json.dumps(options)]) == 1
    error = capsys.readouterr().err
    assert "checksum" in error and "data.zip" in error
    assert not out.exists()
