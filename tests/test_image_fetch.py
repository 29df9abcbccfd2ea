"""The image fetcher of image-text pair datasets (mr-vl_pairs), against a server on 127.0.0.1.

The server answers each path from a script of responses (the last one repeats), so a test can
make an image fail twice and then succeed, and it counts the requests per path.
"""

from __future__ import annotations

import io
import logging
import shutil
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import local_http_server
from PIL import Image

from marseval.data import image_fetch
from marseval.data.download import DownloadError
from marseval.data.image_fetch import FAILURES_FILE, fetch_images, read_failures
from marseval.data.retrieval import pair_image_urls
from marseval.data.standardize import standardize
from marseval.data.synthetic.retrieval import write_retrieval
from marseval.errors import DataError, MarsevalError
from marseval.registry import get_dataset

PAIRS = "mr-vl_pairs"
PAIR_OPTS = {"pairs": 8}


def encode(fmt: str, shade: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (shade, 90, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


PNG, JPEG, WEBP = encode("PNG"), encode("JPEG"), encode("WEBP")
HTML = b"<html><body>Image not found, but here is a page</body></html>"


@dataclass
class Images:
    """path -> responses (status, content type, body); the last one repeats."""

    routes: dict[str, list[tuple[int, str, bytes]]] = field(default_factory=dict)
    hits: Counter = field(default_factory=Counter)
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, *responses: tuple[int, str, bytes]) -> str:
        self.routes[path] = list(responses)
        return self.url(path)

    def image(self, path: str, body: bytes = PNG, content_type: str = "image/png") -> str:
        return self.serve(path, (200, content_type, body))

    def total_hits(self) -> int:
        return sum(self.hits.values())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        state: Images = self.server.state  # type: ignore[attr-defined]
        with state.lock:
            state.hits[self.path] += 1
            script = state.routes.get(self.path, [(404, "text/plain", b"no such image")])
            status, content_type, body = script.pop(0) if len(script) > 1 else script[0]
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    for var in ("MARSEVAL_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    state = Images()
    with local_http_server(_Handler, state=state) as port:
        state.port = port
        yield state


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------- fetching


def test_fetches_names_and_bytes(server: Images, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "local").mkdir(parents=True)
    (raw / "local" / "shot.png").write_bytes(PNG)
    items = [
        ("a", server.image("/img/a")),  # suffix from the Content-Type
        ("b", server.image("/img/b.jpeg", JPEG, "application/octet-stream")),  # from the URL
        ("c", server.image("/img/c?size=big", WEBP, "image/webp")),
        ("d", server.image("/img/d.png", JPEG, "image/jpeg; charset=binary")),  # header wins
        ("e", "local/shot.png"),  # relative: copied from the raw folder
    ]
    report = fetch_images(items, raw / "images", workers=3)

    assert (report.fetched, report.skipped_existing, report.failed) == (5, 0, [])
    assert files_in(raw / "images") == {"a.png": PNG, "b.jpeg": JPEG, "c.webp": WEBP,
                                        "d.jpg": JPEG, "e.png": PNG}
    assert read_failures(raw / FAILURES_FILE) == []
    assert (raw / FAILURES_FILE).read_text() == "key,url,reason\n"
    assert server.total_hits() == 4


def test_failures_listed_with_reasons_and_retries(server: Images, tmp_path: Path) -> None:
    dest = tmp_path / "raw" / "images"
    flaky = server.serve("/flaky.png", (503, "text/plain", b"busy"), (500, "text/plain", b"oops"),
                         (200, "image/png", PNG))
    items = [
        ("ok", server.image("/ok.png")),
        ("gone", server.url("/gone.png")),  # nothing there: 404
        ("html", server.image("/page.jpg", HTML, "text/html")),
        ("flaky", flaky),
        ("down", server.serve("/down.png", (502, "text/plain", b"bad gateway"))),
        ("big", server.image("/big.png", PNG + b"\0" * 5000)),  # no size cap (img2dataset)
    ]
    report = fetch_images(items, dest, retries=2, backoff=0)

    assert report.fetched == 3 and sorted(files_in(dest)) == ["big.png", "flaky.png", "ok.png"]
    assert files_in(dest)["flaky.png"] == PNG
    assert len(files_in(dest)["big.png"]) == len(PNG) + 5000
    reasons = {key: reason for key, _, reason in report.failed}
    assert reasons == {
        "down": "HTTP 502 (gave up after 3 attempts)",
        "gone": "HTTP 404 Not Found",
        "html": "not an image",
    }
    assert server.hits["/flaky.png"] == 3 and server.hits["/down.png"] == 3
    assert server.hits["/gone.png"] == 1  # a 404 is not retried
    # the list on disk is the report, sorted by key; URLs as given
    assert read_failures(dest.parent / FAILURES_FILE) == report.failed
    assert [k for k, _, _ in report.failed] == ["down", "gone", "html"]
    assert dict((k, u) for k, u, _ in report.failed)["gone"] == server.url("/gone.png")

    # the links come back: the rerun fetches them and the list is rewritten without them
    server.image("/down.png")
    server.image("/gone.png", JPEG, "image/jpeg")
    again = fetch_images(items, dest, retries=2, backoff=0)
    assert (again.fetched, again.skipped_existing) == (2, 3)
    assert [k for k, _, _ in read_failures(dest.parent / FAILURES_FILE)] == ["html"]
    assert files_in(dest)["gone.jpg"] == JPEG


def test_rerun_fetches_only_what_is_missing(server: Images, tmp_path: Path) -> None:
    dest = tmp_path / "raw" / "images"
    items = [(f"{i:03d}", server.image(f"/{i}.png", encode("PNG", i))) for i in range(6)]
    assert fetch_images(items, dest).fetched == 6
    (dest / "002.png").unlink()
    (dest / ".004.png.abc123.tmp").write_bytes(b"left by a killed run")
    server.hits.clear()

    report = fetch_images(items, dest)
    assert (report.fetched, report.skipped_existing, report.failed) == (1, 5, [])
    assert server.hits == Counter({"/2.png": 1})
    assert files_in(dest)["002.png"] == encode("PNG", 2)
    assert sorted(files_in(dest)) == [f"{i:03d}.png" for i in range(6)]  # temporary removed


def test_absurd_pixel_counts_are_listed_not_fetched(server: Images, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """No byte cap and no PIL bomb limit, but a pixel cap (1e9) named in the failure list."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # PIL alone would refuse 8 x 6
    monkeypatch.setattr(image_fetch, "MAX_PIXELS", 47)
    dest = tmp_path / "raw" / "images"
    report = fetch_images([("wide", server.image("/wide.png"))], dest)
    assert report.failed == [("wide", server.url("/wide.png"),
                              "8x6 = 48 pixels, above the limit of 47")]
    monkeypatch.setattr(image_fetch, "MAX_PIXELS", 48)
    assert fetch_images([("wide", server.image("/wide.png"))], dest).fetched == 1


def test_pair_download_passes_the_reference_timeout_and_retries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from marseval.fetch import _fetch_pair_images

    raw = pairs_raw_plain(tmp_path)
    seen: dict = {}

    def record(items, dest, **kwargs):
        seen.update(kwargs)
        return image_fetch.FetchReport(fetched=len(items))

    monkeypatch.setattr(image_fetch, "fetch_images", record)
    _fetch_pair_images(get_dataset(PAIRS), raw, {})
    assert (seen["timeout"], seen["retries"], seen["workers"]) == (10, 3, 8)
    _fetch_pair_images(get_dataset(PAIRS), raw, {"image_timeout": 2.5, "image_retries": 0,
                                                 "retries": 9})
    assert (seen["timeout"], seen["retries"]) == (2.5, 0)


def pairs_raw_plain(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    write_retrieval(get_dataset(PAIRS), raw, seed=0, size=16, opts=PAIR_OPTS)
    return raw


@pytest.mark.parametrize("key", ["../escape", "sub/dir", "back\\slash", "..", ".hidden", ""])
def test_unsafe_key_rejected(server: Images, tmp_path: Path, key: str) -> None:
    items = [("fine", server.image("/fine.png")), (key, server.image("/bad.png"))]
    with pytest.raises(DownloadError, match="not a safe file name") as info:
        fetch_images(items, tmp_path / "raw" / "images")
    assert repr(key) in str(info.value)
    assert server.total_hits() == 0
    assert not (tmp_path / "raw").exists()


def test_offline_refuses_without_a_request(server: Images, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "raw" / "images"
    items = [("a", server.image("/a.png")), ("b", server.image("/b.png"))]
    monkeypatch.setenv("MARSEVAL_OFFLINE", "1")
    with pytest.raises(DownloadError) as info:
        fetch_images(items, dest)
    message = str(info.value)
    assert "MARSEVAL_OFFLINE" in message and "2 image(s)" in message
    assert server.url("/a.png") in message
    assert server.total_hits() == 0
    assert not (dest.parent / FAILURES_FILE).exists()

    # a complete folder needs no network: offline is fine then
    (dest / "a.png").write_bytes(PNG)
    (dest / "b.webp").write_bytes(WEBP)
    report = fetch_images(items, dest)
    assert (report.fetched, report.skipped_existing) == (0, 2)
    assert server.total_hits() == 0


# --------------------------------------------------------------------------- standardizing


def pairs_raw(tmp_path: Path, server: Images, dead: set[str]) -> Path:
    """Synthetic mr-vl_pairs raw data whose `dead` keys point at missing remote images."""
    raw = tmp_path / "raw"
    write_retrieval(get_dataset(PAIRS), raw, seed=0, size=32, opts=PAIR_OPTS)
    shard = raw / "data" / "train-00000-of-00001.parquet"
    frame = pd.read_parquet(shard)
    for key in dead:
        (raw / "images" / f"{key}.png").unlink()
        frame.loc[frame["key"] == key, "image_url"] = server.url(f"/dead/{key}.jpg")
    frame.to_parquet(shard, index=False)
    return raw


def test_standardize_drops_unfetched_pairs(server: Images, tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    spec = get_dataset(PAIRS)
    dead = {"000000002", "000000005"}
    raw = pairs_raw(tmp_path, server, dead)
    # the relative URLs of the synthetic data are already in place: only the dead are tried
    report = fetch_images(pair_image_urls(raw, spec), raw / "images", base=raw, backoff=0)
    assert (report.fetched, report.skipped_existing) == (0, 6)
    assert {k for k, _, _ in report.failed} == dead
    assert server.total_hits() == 2

    out = tmp_path / "std"
    with caplog.at_level(logging.WARNING):
        meta = standardize(raw, out, PAIRS, "huggingface", [1.0], [1])
    assert meta["dropped_unfetched_images"] == 2
    assert meta["splits"] == {"test": 6}
    assert "dropped 2 of 8 pairs" in caplog.text
    samples = pd.read_parquet(out / "samples.parquet")
    assert set(samples["sample_id"]) == {f"{i:09d}" for i in range(8)} - dead

    # an image missing that the fetcher never reported lost: the raw folder is broken
    (raw / "images" / "000000001.png").unlink()
    with pytest.raises(DataError, match="'000000001'.*has not been fetched"):
        standardize(raw, tmp_path / "std2", PAIRS, "huggingface", [1.0], [1])


def test_standardize_fails_when_every_image_failed(server: Images, tmp_path: Path) -> None:
    spec = get_dataset(PAIRS)
    raw = pairs_raw(tmp_path, server, {f"{i:09d}" for i in range(8)})
    assert len(fetch_images(pair_image_urls(raw, spec), raw / "images", backoff=0).failed) == 8
    with pytest.raises(DataError, match="all 8 images failed to fetch"):
        standardize(raw, tmp_path / "std", PAIRS, "huggingface", [1.0], [1])
    assert not (tmp_path / "std").exists()


# --------------------------------------------------------------------------- download stage


def _fake_hub(monkeypatch: pytest.MonkeyPatch, repo_dir: Path) -> list[str]:
    """huggingface_hub replaced by a copy of `repo_dir`; returns the log of snapshot calls.
    (The real client against a fake Hub is tested in test_hf_download.py.)"""
    import huggingface_hub

    files = [p.relative_to(repo_dir).as_posix() for p in repo_dir.rglob("*") if p.is_file()]
    calls: list[str] = []

    class Api:
        def dataset_info(self, repo: str, revision: str | None = None) -> SimpleNamespace:
            return SimpleNamespace(sha="0" * 40, siblings=[SimpleNamespace(rfilename=f)
                                                           for f in files])

    def snapshot_download(*, repo_id: str, local_dir: Path, **_: object) -> str:
        calls.append(repo_id)
        shutil.copytree(repo_dir, local_dir, dirs_exist_ok=True)
        (Path(local_dir) / ".cache" / "huggingface").mkdir(parents=True, exist_ok=True)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_huggingface_download_fetches_and_resumes(server: Images, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash midway (disk full) keeps the images fetched so far in staging; the rerun
    fetches only the rest and publishes the snapshot with images/ and the failure list."""
    from marseval.fetch import download

    repo = tmp_path / "repo"
    keys = [f"{i:09d}" for i in range(5)]
    rows = [{"key": k, "image_url": server.image(f"/i/{k}.png", encode("PNG", i)),
             "ori_caption": "crater", "refined_caption": "a crater"} for i, k in enumerate(keys)]
    rows[4]["image_url"] = server.url("/i/dead.png")
    (repo / "data").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(repo / "data" / "train-00000-of-00001.parquet", index=False)
    calls = _fake_hub(monkeypatch, repo)

    real_write = image_fetch.atomic_write_bytes
    written: list[Path] = []

    def disk_fills_up(path: Path, data: bytes) -> Path:
        if len(written) == 2:
            raise OSError(28, "No space left on device")
        written.append(path)
        return real_write(path, data)

    monkeypatch.setattr(image_fetch, "atomic_write_bytes", disk_fills_up)
    out = tmp_path / "raw" / "huggingface" / PAIRS
    options = {"retries": 0, "image_workers": 1}
    with pytest.raises(OSError, match="No space left"):
        download(PAIRS, "huggingface", out, options)
    staging = out.with_name(f".{out.name}.partial")
    assert not out.exists()
    assert sorted(p.name for p in (staging / "images").iterdir()) == sorted(
        p.name for p in written)

    monkeypatch.setattr(image_fetch, "atomic_write_bytes", real_write)
    server.hits.clear()
    download(PAIRS, "huggingface", out, options)
    assert calls == ["SUSTech/Mars-VL-Pairs"] * 2
    assert not staging.exists() and not (out / ".cache").exists()
    assert sorted(files_in(out / "images")) == [f"{k}.png" for k in keys[:4]]
    assert sum(server.hits.values()) == 5 - len(written) and not any(
        server.hits[f"/i/{p.name}"] for p in written)
    assert [k for k, _, _ in read_failures(out / FAILURES_FILE)] == [keys[4]]
    meta = standardize(out, tmp_path / "std", PAIRS, "huggingface", [1.0], [1])
    assert meta["splits"] == {"test": 4} and meta["dropped_unfetched_images"] == 1


def test_huggingface_download_fails_when_no_image_arrives(
        server: Images, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from marseval.fetch import download

    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    rows = [{"key": f"k{i}", "image_url": server.url(f"/none/{i}.png"), "ori_caption": "dune",
             "refined_caption": "a dune"} for i in range(3)]
    pd.DataFrame(rows).to_parquet(repo / "data" / "train-00000-of-00001.parquet", index=False)
    _fake_hub(monkeypatch, repo)
    out = tmp_path / "raw" / PAIRS
    with pytest.raises(MarsevalError, match="none of its 3 images could be fetched") as info:
        download(PAIRS, "huggingface", out, {"retries": 0})
    assert "HTTP 404" in str(info.value) and FAILURES_FILE in str(info.value)
    assert not out.exists()
