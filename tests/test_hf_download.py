"""`download --source huggingface` through the real huggingface_hub client, against a fake Hub.

A threaded HTTP server on 127.0.0.1 plays the part of the Hugging Face Hub for one dataset
repository: the parquet files marseval's synthetic writer produces (one per split and per
upstream subset) plus a README, at a main commit and at an older one.
huggingface_hub is pointed at it with HF_ENDPOINT; since the library reads that variable once,
at import, the fixture also patches the constants it copied it into. Its caches, token files and
home live under tmp_path, so no user state is read or written, and no credentials reach the
server (checked).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from conftest import local_http_server

REPO = Path(__file__).resolve().parents[1]
REPO_ID = "Mirali33/mb-domars16k"
DATASET = "mb-domars16k"
SHA = "0123456789abcdef0123456789abcdef01234567"
OLD_SHA = "fedcba9876543210fedcba9876543210fedcba98"  # an older commit of the same repo
SAMPLES = {"train": 12, "val": 4, "test": 4}
# the repo info call, with or without an explicit revision
INFO_PATHS = {f"/api/datasets/{REPO_ID}", f"/api/datasets/{REPO_ID}/revision/main"}
README = b"---\nlicense: cc-by-4.0\n---\n# mb-domars16k (fake hub copy for tests)\n"
PARQUETS = [f"data/{split}-00000-of-00001.parquet" for split in ("train", "val", "test")]


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# --------------------------------------------------------------------------- the fake Hub


@dataclass
class FakeHub:
    """What the handler serves and what it saw; tests flip the failure switches."""

    repo_id: str
    sha: str  # what "main" points at
    commits: dict[str, dict[str, bytes]]  # commit sha -> path -> content
    port: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path?query)
    auth_headers: list[str] = field(default_factory=list)
    repo_missing: bool = False  # answer every request for the repo as the Hub does for no repo
    repo_missing_status: int = 404
    repo_missing_code: str | None = "RepoNotFound"
    fail_get: dict[str, int] = field(default_factory=dict)  # repo path -> status for its GET
    fail_head: dict[str, int] = field(default_factory=dict)  # repo path -> status for its HEAD
    fail_api: int | None = None  # status for every /api/ call (the Hub API is down)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def resolve(self, rev: str) -> str | None:
        rev = self.sha if rev == "main" else rev
        return rev if rev in self.commits else None

    @staticmethod
    def is_lfs(path: str) -> bool:
        return path.endswith(".parquet")

    def etag(self, data: bytes, path: str) -> str:
        return hashlib.sha256(data).hexdigest() if self.is_lfs(path) else git_blob_sha1(data)

    def info(self, sha: str) -> dict:
        return {
            "id": self.repo_id,
            "author": self.repo_id.split("/")[0],
            "sha": sha,
            "private": False,
            "gated": False,
            "disabled": False,
            "lastModified": "2025-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": p} for p in sorted(self.commits[sha])],
        }

    def tree(self, sha: str) -> list[dict]:
        files = self.commits[sha]
        entries: list[dict] = []
        for folder in sorted({p.rsplit("/", 1)[0] for p in files if "/" in p}):
            entries.append(
                {
                    "type": "directory",
                    "oid": git_blob_sha1(folder.encode()),
                    "size": 0,
                    "path": folder,
                }
            )
        for path, data in sorted(files.items()):
            entry = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": path}
            if self.is_lfs(path):
                entry["lfs"] = {"oid": self.etag(data, path), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        return entries

    def paths_requested(self, method: str) -> list[str]:
        with self.lock:
            return [p.split("?")[0] for m, p in self.requests if m == method]


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _reply(self, status: int, body: bytes, headers: dict[str, str], head: bool) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str, head: bool) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._reply(status, json.dumps({"error": message}).encode(), headers, head)

    def _handle(self, head: bool) -> None:
        hub: FakeHub = self.server.hub  # type: ignore[attr-defined]
        method = "HEAD" if head else "GET"
        with hub.lock:
            hub.requests.append((method, self.path))
            if self.headers.get("Authorization"):
                hub.auth_headers.append(self.headers["Authorization"])
        path = unquote(urlsplit(self.path).path)
        if path == f"/api/datasets/{hub.repo_id}":  # repo info without a revision: main
            path += "/revision/main"
        api_prefix = f"/api/datasets/{hub.repo_id}/"
        file_prefix = f"/datasets/{hub.repo_id}/resolve/"
        if not (path.startswith(api_prefix) or path.startswith(file_prefix)):
            return self._error(404, "RepoNotFound", "Repository not found", head)
        if hub.repo_missing:
            return self._error(
                hub.repo_missing_status, hub.repo_missing_code, "Repository not found", head
            )

        if path.startswith(api_prefix) and hub.fail_api:
            return self._reply(hub.fail_api, b"simulated hub outage", {}, head)
        if path.startswith(api_prefix):
            rest = path[len(api_prefix) :]
            kind, _, rev = rest.partition("/")
            if kind not in ("revision", "tree"):
                return self._error(404, None, f"no fake route for {path}", head)
            sha = hub.resolve(rev)
            if sha is None:
                return self._error(404, "RevisionNotFound", "Invalid rev id", head)
            body = hub.info(sha) if kind == "revision" else hub.tree(sha)
            return self._reply(
                200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head
            )

        rev, _, repo_path = path[len(file_prefix) :].partition("/")
        sha = hub.resolve(rev)
        if sha is None:
            return self._error(404, "RevisionNotFound", "Invalid rev id", head)
        if repo_path not in hub.commits[sha]:
            return self._error(404, "EntryNotFound", "Entry not found", head)
        fail = (hub.fail_head if head else hub.fail_get).get(repo_path)
        if fail:
            return self._reply(fail, b"simulated hub failure", {"X-Repo-Commit": sha}, head)
        data = hub.commits[sha][repo_path]
        etag = hub.etag(data, repo_path)
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": sha,
            "ETag": f'"{etag}"',
            "Accept-Ranges": "bytes",
        }
        if hub.is_lfs(repo_path):
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(len(data))
        self._reply(200, data, headers, head)

    def do_GET(self) -> None:  # noqa: N802
        self._handle(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle(head=True)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def hub_repo(tmp_path_factory: pytest.TempPathFactory):
    """The repository's files (path -> bytes) and the generated benchmark behind them."""
    from marseval.data.synthetic.generate import generate_benchmark
    from marseval.data.synthetic.writers import write_huggingface
    from marseval.registry import get_dataset

    spec = get_dataset(DATASET)
    raw = generate_benchmark(spec, seed=0, size=32, samples=SAMPLES)
    repo_dir = tmp_path_factory.mktemp("hub_repo")
    write_huggingface(raw, spec, repo_dir)
    (repo_dir / "README.md").write_bytes(README)
    files = {
        p.relative_to(repo_dir).as_posix(): p.read_bytes()
        for p in sorted(repo_dir.rglob("*"))
        if p.is_file()
    }
    # the writer's layout: one parquet file per split and per upstream subset
    assert set(PARQUETS) < set(files) and len(files) == 1 + 3 + len(raw.subsets)
    assert all(p == "README.md" or p.endswith(".parquet") for p in files)
    return files, raw


def _hub_env(monkeypatch: pytest.MonkeyPatch, home: Path, endpoint: str) -> None:
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for var in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "MARSEVAL_OFFLINE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_OIDC_RESOURCE",
        "HF_OIDC_ID_TOKEN",
        "HUGGINGFACE_CO_STAGING",
        "HF_ASSETS_CACHE",
        "HF_XET_CACHE",
    ):
        # setenv first so that teardown also removes what the code under test sets
        # (`--offline` writes MARSEVAL_OFFLINE/HF_HUB_OFFLINE into os.environ)
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)


@pytest.fixture
def hub(hub_repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    files, _ = hub_repo
    old = {p: d for p, d in files.items() if p in PARQUETS}
    old["README.md"] = b"# an older revision\n"
    state = FakeHub(repo_id=REPO_ID, sha=SHA, commits={SHA: dict(files), OLD_SHA: old})
    with local_http_server(_HubHandler, hub=state) as port:
        state.port = port

        home = tmp_path / "hf_home"
        _hub_env(monkeypatch, home, state.endpoint)
        # huggingface_hub copies the environment into module constants once, at import; it may
        # already be imported by now (another test, or this fixture earlier), so patch those copies.
        from huggingface_hub import constants
        from huggingface_hub.utils import _http

        patched = {
            "ENDPOINT": state.endpoint,
            "HUGGINGFACE_CO_URL_TEMPLATE": state.endpoint
            + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_HOME": str(home),
            "HF_HUB_CACHE": str(home / "hub"),
            "HUGGINGFACE_HUB_CACHE": str(home / "hub"),
            "HF_TOKEN_PATH": str(home / "token"),
            "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
            "HF_HUB_OFFLINE": False,
            "HF_HUB_DISABLE_XET": True,
            "HF_HUB_DISABLE_TELEMETRY": True,
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": True,
        }
        for name, value in patched.items():
            if hasattr(constants, name):
                monkeypatch.setattr(constants, name, value)
        # The shared HTTP client reads proxy settings when it is created: start from a fresh one.
        _http.close_session()
        try:
            yield state
        finally:
            _http.close_session()


def _staging(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


def _cli_args(out: Path, *extra: str) -> list[str]:
    return ["download", "--dataset", DATASET, "--source", "huggingface", "--out", str(out), *extra]


def _error_line(stderr: str) -> str:
    """The CLI's error report: one line, `error: ...`, last on stderr (log lines may precede it)."""
    assert "error: " in stderr, stderr
    report = stderr[stderr.index("error: ") :].strip()
    assert "\n" not in report, f"error report spans several lines:\n{report}"
    return report


def _published_files(out: Path) -> dict[str, bytes]:
    """The repository's files in a download (the download record aside)."""
    from marseval.fetch import SOURCE_RECORD

    return {
        p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != SOURCE_RECORD
    }


def _fetched(out: Path) -> dict:
    from marseval.fetch import SOURCE_RECORD

    return json.loads((out / SOURCE_RECORD).read_text())


# --------------------------------------------------------------------------- tests


def test_download_then_standardize(
    hub: FakeHub, hub_repo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pandas as pd

    from marseval.data.standardize import standardize
    from marseval.fetch import download

    files, raw = hub_repo
    out = tmp_path / "raw" / "huggingface" / DATASET
    download(DATASET, "huggingface", out, {"huggingface": REPO_ID})

    # every repo file, byte for byte, and nothing else: no hub bookkeeping, no staging folder
    assert _published_files(out) == files
    assert not (out / ".cache").exists()
    assert not _staging(out).exists()
    assert sorted(p.name for p in out.parent.iterdir()) == [DATASET]
    # the real client went through the Hub API: repo info, tree listing, then each file
    gets = hub.paths_requested("GET")
    assert INFO_PATHS & set(gets)
    assert f"/api/datasets/{REPO_ID}/tree/{SHA}" in gets
    for path in files:
        assert gets.count(f"/datasets/{REPO_ID}/resolve/{SHA}/{path}") == 1, path
        assert f"/datasets/{REPO_ID}/resolve/{SHA}/{path}" in hub.paths_requested("HEAD")
    assert hub.auth_headers == []  # no user token leaked to the endpoint
    # nothing else was contacted (no Xet token route, no telemetry)
    assert all(
        p in INFO_PATHS or p.startswith((f"/api/datasets/{REPO_ID}/tree/", "/datasets/"))
        for p in gets + hub.paths_requested("HEAD")
    ), hub.requests

    # the commit fetched is recorded, and standardization carries it into meta.json
    assert _fetched(out) == {"huggingface": REPO_ID, "requested": None, "commit": SHA}
    meta = standardize(out, tmp_path / "std", DATASET, "huggingface", [0.5, 1.0], [1])
    assert meta["fetched"]["commit"] == SHA
    assert meta["splits"] == SAMPLES
    assert meta["layout"] == "huggingface"
    assert meta["upstream_subsets"] == sorted(raw.subsets)  # the subset files came along too
    # the registry knows the real dataset's sizes; the fake repo is tiny, so standardize warns
    assert meta["split_mismatch"]["train"] == {"expected": 11305, "found": 12}
    assert f"WARNING {DATASET}: split counts differ" in capsys.readouterr().out
    frame = pd.read_parquet(tmp_path / "std" / "samples.parquet").set_index("sample_id")
    assert frame["label"].to_dict() == {s.stem: s.label for s in raw.samples}
    assert frame["split"].value_counts().to_dict() == SAMPLES


def test_registry_repo_and_pinned_revision(hub: FakeHub, hub_repo, tmp_path: Path) -> None:
    """No repo override: the registry names the repo; options.revision picks the commit."""
    from marseval.fetch import download
    from marseval.registry import get_dataset

    files, _ = hub_repo
    assert get_dataset(DATASET).huggingface == REPO_ID
    out = tmp_path / "out"
    download(DATASET, "huggingface", out, {"revision": OLD_SHA})
    assert _published_files(out) == hub.commits[OLD_SHA]
    assert _published_files(out) != files  # not what main points at
    assert _fetched(out) == {"huggingface": REPO_ID, "requested": OLD_SHA, "commit": OLD_SHA}
    file_paths = {p for p in hub.paths_requested("GET") if "/resolve/" in p}
    assert file_paths == {
        f"/datasets/{REPO_ID}/resolve/{OLD_SHA}/{p}" for p in hub.commits[OLD_SHA]
    }


def test_cli_offline_makes_no_request(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from marseval.cli import main

    out = tmp_path / "out"
    assert main(_cli_args(out, "--offline")) == 1
    err = _error_line(capsys.readouterr().err)
    assert REPO_ID in err and "offline" in err
    assert hub.requests == []
    assert not out.exists()
    assert not _staging(out).exists()


def _run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m marseval ...` in a fresh interpreter, as the workflow runs it."""
    env = dict(os.environ)  # the fixture's HF_* settings, pointing at the fake hub
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "marseval", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_cli_offline_subprocess_makes_no_request(hub: FakeHub, tmp_path: Path) -> None:
    """The workflow's real call: a fresh `python -m marseval download --offline`."""
    out = tmp_path / "out"
    proc = _run_cli(_cli_args(out, "--offline"), tmp_path)
    assert proc.returncode == 1, proc.stderr
    err = _error_line(proc.stderr)
    assert REPO_ID in err and "offline" in err
    assert hub.requests == []
    assert not out.exists()


@pytest.mark.parametrize(
    ("status", "code"),
    [(404, "RepoNotFound"), (401, "RepoNotFound"), (404, None)],
    ids=["404-RepoNotFound", "401-RepoNotFound", "bare-404"],
)
def test_cli_missing_repo(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str], status: int, code: str | None
) -> None:
    from marseval.cli import main

    hub.repo_missing, hub.repo_missing_status, hub.repo_missing_code = True, status, code
    out = tmp_path / "out"
    assert main(_cli_args(out)) == 1
    err = _error_line(capsys.readouterr().err)
    assert REPO_ID in err
    assert "offline" not in err  # we are online; the repo is missing
    assert hub.paths_requested("GET")[0] in INFO_PATHS
    assert not any("/resolve/" in p for _, p in hub.requests)  # no file was attempted
    assert not out.exists()
    assert not _staging(out).exists()


def test_cli_file_failure_midway_then_resume(
    hub: FakeHub, hub_repo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """HEAD answers, the GET of one parquet file fails with 500 every time: nothing published;
    after the Hub recovers, the rerun fetches only what is missing."""
    from marseval.cli import main

    files, _ = hub_repo
    broken = "data/val-00000-of-00001.parquet"
    hub.fail_get[broken] = 500
    out = tmp_path / "out"
    assert main(_cli_args(out)) == 1
    err = _error_line(capsys.readouterr().err)
    assert REPO_ID in err and "500" in err
    assert not out.exists()
    staging = _staging(out)
    assert not (staging / broken).exists()
    assert not list(staging.rglob("*.incomplete"))
    # the files that finished wait, complete, in staging (the broken one was submitted last;
    # huggingface_hub cancels downloads that had not started yet when it failed)
    kept = {p for p in files if (staging / p).is_file()}
    assert kept and broken not in kept
    assert all((staging / p).read_bytes() == files[p] for p in kept)

    hub.fail_get.clear()
    hub.requests.clear()
    assert main(_cli_args(out)) == 0
    assert _published_files(out) == files
    assert not staging.exists()
    file_gets = sorted(p for p in hub.paths_requested("GET") if "/resolve/" in p)
    assert file_gets == sorted(
        f"/datasets/{REPO_ID}/resolve/{SHA}/{p}" for p in set(files) - kept
    )  # only what was missing


def test_cli_file_head_500_fails_fast_without_publishing(
    hub: FakeHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A file whose HEAD answers 500 every time: huggingface_hub retries with backoff (sleeps
    patched out here), then gives up; nothing is published."""
    from huggingface_hub.utils import _http

    from marseval.cli import main

    sleeps: list[float] = []

    class _Time:
        def __getattr__(self, name: str):
            import time

            return getattr(time, name)

        @staticmethod
        def sleep(seconds: float) -> None:
            sleeps.append(seconds)

    monkeypatch.setattr(_http, "time", _Time())
    broken = "data/test-00000-of-00001.parquet"
    hub.fail_head[broken] = 500
    out = tmp_path / "out"
    assert main(_cli_args(out)) == 1
    err = _error_line(capsys.readouterr().err)
    assert REPO_ID in err and "offline" not in err
    assert not out.exists()
    assert not (_staging(out) / broken).exists()
    heads = hub.paths_requested("HEAD").count(f"/datasets/{REPO_ID}/resolve/{SHA}/{broken}")
    assert heads > 1 and sleeps  # it did retry, with the backoff sleeps patched out
    assert f"/datasets/{REPO_ID}/resolve/{SHA}/{broken}" not in hub.paths_requested("GET")


@pytest.mark.parametrize("rerun", ["hub-down", "hub-down-new-hf-cache", "offline-new-hf-cache"])
def test_cli_partial_staging_is_never_published(
    hub: FakeHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    rerun: str,
) -> None:
    """A failed run leaves a partial staging folder; the rerun cannot reach the Hub (its API
    answers 503, or --offline). huggingface_hub then falls back to "return the existing
    local_dir"; marseval must not publish that partial folder as the finished download."""
    from huggingface_hub import constants

    from marseval.cli import main

    broken = "data/train-00000-of-00001.parquet"
    hub.fail_get[broken] = 500
    out = tmp_path / "out"
    assert main(_cli_args(out)) == 1
    assert _staging(out).is_dir() and not (_staging(out) / broken).exists()
    capsys.readouterr()

    if rerun.endswith("new-hf-cache"):  # e.g. another node or job with its own HF_HOME
        home = tmp_path / "hf_home2"
        monkeypatch.setenv("HF_HOME", str(home))
        monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    hub.fail_get.clear()
    hub.requests.clear()
    if rerun.startswith("offline"):
        # a fresh process, as the workflow runs it: huggingface_hub honours HF_HUB_OFFLINE
        proc = _run_cli(_cli_args(out, "--offline"), tmp_path)
        rc, err = proc.returncode, _error_line(proc.stderr)
        assert hub.requests == []
    else:
        hub.fail_api = 503
        rc, err = main(_cli_args(out)), _error_line(capsys.readouterr().err)
    assert rc == 1
    assert REPO_ID in err
    assert not out.exists()
