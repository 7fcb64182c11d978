"""tools/download.sh against a local HTTP server (127.0.0.1 only) serving tiny fixture files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "download.sh"
MANIFEST = Path(__file__).resolve().parents[1] / "vqa_cp" / "sources.json"

VQA2_ZIPS = {
    "v2_Questions_Train_mscoco.zip": ["v2_OpenEnded_mscoco_train2014_questions.json"],
    "v2_Questions_Val_mscoco.zip": ["v2_OpenEnded_mscoco_val2014_questions.json"],
    "v2_Questions_Test_mscoco.zip": [
        "v2_OpenEnded_mscoco_test2015_questions.json",
        "v2_OpenEnded_mscoco_test-dev2015_questions.json",
    ],
    "v2_Annotations_Train_mscoco.zip": ["v2_mscoco_train2014_annotations.json"],
    "v2_Annotations_Val_mscoco.zip": ["v2_mscoco_val2014_annotations.json"],
}
VQACP_FILES = [f"vqacp_v2_{s}_{k}.json" for s in ("train", "test") for k in ("questions", "annotations")]
TSV = "trainval_36/trainval_resnet101_faster_rcnn_genome_36.tsv"
GLOVE_FILES = ["glove.6B.50d.txt", "glove.6B.300d.txt"]
VQACP_ADVICE = ("(no public mirror of the VQA-CP v2 files is known: import a copy with --from PATH, or name a mirror "
                "with --mirror BASE_URL)")
ADVICE = ("check the connection and run again (partial downloads resume), add a mirror with --mirror BASE_URL, or "
          "import a copy with --from PATH")
HTML_PAGE = b"<html><head><title>Service Unavailable</title></head><body>The server is down.</body></html>\n"


@dataclass
class Request:
    method: str
    path: str
    range: str | None


@dataclass
class Server:
    """What the handler serves and how it misbehaves, plus a log of the requests it saw."""

    root: Path
    port: int = 0
    missing: set[str] = field(default_factory=set)  # paths answered with 404
    truncate: dict[str, int] = field(default_factory=dict)  # path -> GETs still to cut after half the body
    html: set[str] = field(default_factory=set)  # paths answered 200 with an HTML error page instead
    log: list[Request] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def gets(self, path: str | None = None) -> list[Request]:
        return [r for r in self.log if r.method == "GET" and (path is None or r.path == path)]


def make_handler(state: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        """Static files with HEAD, single `bytes=N-` ranges (206 / 416), 404s and cut-short bodies."""

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self.serve(body=False)

        def do_GET(self) -> None:
            self.serve(body=True)

        def serve(self, body: bool) -> None:
            state.log.append(Request(self.command, self.path, self.headers.get("Range")))
            path = state.root / self.path.lstrip("/")
            if self.path in state.missing or not path.is_file():
                self.send_error(404)
                return
            data = HTML_PAGE if self.path in state.html else path.read_bytes()
            start = 0
            range_header = self.headers.get("Range")
            if range_header is not None:
                start = int(range_header.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if not body:
                return
            payload = data[start:]
            if state.truncate.get(self.path, 0) > 0:
                state.truncate[self.path] -= 1
                payload = payload[: len(payload) // 2]
                self.close_connection = True
            self.wfile.write(payload)

    return Handler


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def expected_layout() -> dict[str, bytes]:
    """Raw-layout path (relative to DATA) -> the bytes the server's fixtures hold for it."""
    files: dict[str, bytes] = {}
    for zip_members in VQA2_ZIPS.values():
        for name in zip_members:
            key = "annotations" if "annotations" in name else "questions"
            files[name] = json.dumps({key: [{"question_id": len(name), "source": name}]}).encode()
    for name in VQACP_FILES:
        files[name] = json.dumps([{"question_id": 7, "source": name, "pad": "x" * 200}]).encode()
    for name in GLOVE_FILES:
        files[f"glove/{name}"] = f"the 0.1 0.2\nof 0.3 -0.4\n# {name}\n".encode()
    files[TSV] = b"9\t640\t480\t36\tYm94ZXM=\tZmVhdHVyZXM=\n"
    return files


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    files = expected_layout()
    root = tmp_path / "www"
    write_zip(root / "glove" / "glove.6B.zip", {n: files[f"glove/{n}"] for n in GLOVE_FILES})
    for zip_name, members in VQA2_ZIPS.items():
        write_zip(root / "vqa" / zip_name, {n: files[n] for n in members})
    (root / "vqacp").mkdir()
    for name in VQACP_FILES:
        (root / "vqacp" / name).write_bytes(files[name])
    write_zip(root / "features" / "trainval_36.zip", {TSV: files[TSV]})

    state = Server(root)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def plain_manifest(folder: Path) -> Path:
    """The real manifest with only its first (overridable) source per file, no sizes or digests, and the json
    checks a parse instead of vqa_cp.verify's (these fixtures are not the release): tests never leave 127.0.0.1."""
    manifest = json.loads(MANIFEST.read_text())
    for entry in manifest["files"]:
        entry["sources"] = entry["sources"][:1]
        for key in ("size", "md5", "sha256"):
            entry.pop(key, None)
        entry["check"] = {"raw": "json"}.get(entry["check"], entry["check"])
        for output in entry["outputs"]:
            output["check"] = {"raw": "json", "features": "none"}.get(output["check"], output["check"])
    path = folder / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def offline_env(tmp: Path) -> dict[str, str]:
    """Python and the test manifest; any request not to 127.0.0.1 goes to a closed proxy port."""
    proxy = f"http://127.0.0.1:{closed_port()}"
    return {"PYTHON": sys.executable, "VQA_CP_MANIFEST": str(plain_manifest(tmp)), "http_proxy": proxy,
            "https_proxy": proxy, "HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "no_proxy": "127.0.0.1",
            "NO_PROXY": "127.0.0.1"}


def run(server: Server, data: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **offline_env(server.root.parent),
        "VQA_CP_GLOVE_URL": server.url("/glove/glove.6B.zip"),
        "VQA_CP_VQA2_BASE": server.url("/vqa"),
        "VQA_CP_VQACP_BASE": server.url("/vqacp/"),
        "VQA_CP_FEATURES_URL": server.url("/features/trainval_36.zip"),
        "VQA_CP_RETRIES": "1",
        "VQA_CP_RETRY_DELAY": "0",
        "VQA_CP_CONNECT_TIMEOUT": "5",
        **env_extra,
    }
    return subprocess.run(
        ["bash", str(SCRIPT), "--data", str(data), *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def all_urls(server: Server) -> dict[str, str]:
    """File name in DATA -> URL the script must fetch it from."""
    urls = {"glove.6B.zip": server.url("/glove/glove.6B.zip"),
            "trainval_36.zip": server.url("/features/trainval_36.zip")}
    urls.update({name: server.url(f"/vqa/{name}") for name in VQA2_ZIPS})
    urls.update({name: server.url(f"/vqacp/{name}") for name in VQACP_FILES})
    return urls


def test_dry_run_lists_every_file_without_network(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = run(server, data, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    urls = all_urls(server)
    assert len(lines) == len(urls) == 11
    for name, url in urls.items():
        assert sum(line.startswith(f"{url} -> {data}/{name}") for line in lines) == 1, name
    assert any(line.endswith(f"(unzip into {data}/glove/, then remove the zip)") for line in lines)

    subset = run(server, data, "--dry-run", "--only", "vqacp,glove").stdout.splitlines()
    assert sorted(line.split(" -> ")[0] for line in subset) == sorted(
        urls[name] for name in ["glove.6B.zip", *VQACP_FILES]
    )
    assert server.log == []
    assert not data.exists()


def test_full_run_builds_raw_layout_then_rerun_skips(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = run(server, data, "--min-free-gb", "0")
    assert proc.returncode == 0, proc.stderr
    assert error_lines(proc) == []
    expected = expected_layout()
    on_disk = {p.relative_to(data).as_posix(): p.read_bytes() for p in data.rglob("*") if p.is_file()}
    assert on_disk == expected  # no zip, .part or temporary folder left over
    assert not list(data.glob(".*"))
    assert len(server.gets()) == 11
    assert "summary: 11 fetched, 0 already in place, 0 failed" in proc.stdout

    requests_before = len(server.log)
    again = run(server, data)  # nothing left to fetch, so the free-space estimate is 0
    assert again.returncode == 0, again.stderr
    assert len(server.log) == requests_before
    assert "summary: 0 fetched, 11 already in place, 0 failed" in again.stdout


def test_partial_file_is_resumed_with_a_range_request(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    name = VQACP_FILES[0]
    original = (server.root / "vqacp" / name).read_bytes()
    (data / f"{name}.part").write_bytes(original[:100])
    proc = run(server, data, "--only", "vqacp", "--min-free-gb", "0")
    assert proc.returncode == 0, proc.stderr
    assert [r.range for r in server.gets(f"/vqacp/{name}")] == ["bytes=100-"]
    assert (data / name).read_bytes() == original
    assert not (data / f"{name}.part").exists()


def test_cut_short_download_is_kept_then_resumed(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    name = VQACP_FILES[1]
    path = f"/vqacp/{name}"
    original = (server.root / "vqacp" / name).read_bytes()
    server.truncate[path] = 1
    proc = run(server, data, "--only", "vqacp", "--min-free-gb", "0", VQA_CP_RETRIES="0")
    assert proc.returncode == 1
    assert error_lines(proc) == [
        f"error: {name}: could not download {server.url(path)}: transfer cut short: {len(original) // 2} of "
        f"{len(original)} bytes; {data}/{name}.part kept for resuming {VQACP_ADVICE}",
        f"error: failed: {name} (run download.sh again to retry; complete files are skipped)",
    ]
    assert (data / f"{name}.part").read_bytes() == original[: len(original) // 2]
    assert not (data / name).exists()

    # With one retry allowed, a cut that happens once is resumed within the same run.
    server.truncate[path] = 1
    (data / f"{name}.part").unlink()
    proc = run(server, data, "--only", "vqacp", "--min-free-gb", "0")
    assert proc.returncode == 0, proc.stderr
    assert [r.range for r in server.gets(path)][-2:] == [None, f"bytes={len(original) // 2}-"]
    assert (data / name).read_bytes() == original


def test_dead_links_are_reported_and_the_rest_still_downloads(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server.missing.update(f"/vqacp/{name}" for name in VQACP_FILES)
    dead_features = f"http://127.0.0.1:{closed_port()}/trainval_36.zip"
    proc = run(server, data, "--min-free-gb", "0", VQA_CP_FEATURES_URL=dead_features)
    assert proc.returncode == 1
    errors = error_lines(proc)
    for name in VQACP_FILES:
        (line,) = [e for e in errors if e.startswith(f"error: {name}: ")]
        assert f"could not download {server.url('/vqacp/' + name)}: " in line
        assert "HTTP 404" in line and line.endswith(VQACP_ADVICE)
        assert len([r for r in server.log if r.path == f"/vqacp/{name}"]) == 1  # a 404 is not retried
    (line,) = [e for e in errors if e.startswith("error: trainval_36.zip: ")]
    assert f"could not download {dead_features}: " in line and "connect" in line.lower()
    assert "trainval_36.zip: " in proc.stderr and "attempt 2 of 2" in proc.stderr  # refused is retried
    assert errors[-1] == (
        f"error: failed: {' '.join(VQACP_FILES)} trainval_36.zip "
        "(run download.sh again to retry; complete files are skipped)"
    )
    assert "summary: 6 fetched, 0 already in place, 5 failed" in proc.stdout
    expected = expected_layout()
    for rel in ["glove/glove.6B.300d.txt", *[n for ms in VQA2_ZIPS.values() for n in ms]]:
        assert (data / rel).read_bytes() == expected[rel]
    assert not (data / TSV).exists() and not any((data / n).exists() for n in VQACP_FILES)


def test_corrupt_zip_is_moved_aside_and_refetched_next_run(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    bad = "v2_Questions_Val_mscoco.zip"
    good = (server.root / "vqa" / bad).read_bytes()
    garbage = b"PK\x03\x04 this is not really a zip archive"
    (server.root / "vqa" / bad).write_bytes(garbage)
    proc = run(server, data, "--only", "vqa2", "--min-free-gb", "0")
    assert proc.returncode == 1
    assert error_lines(proc)[0] == (
        f"error: {bad}: could not download {server.url('/vqa/' + bad)}: sent a bad file: corrupt zip: File is not "
        f"a zip file (truncated, or not a zip); moved to {data}/{bad}.bad, the next run downloads it afresh "
        f"({ADVICE})"
    )
    assert len(server.gets(f"/vqa/{bad}")) == 1  # a complete but bad file is not retried within the run
    assert (data / f"{bad}.bad").read_bytes() == garbage
    assert not (data / bad).exists() and not (data / f"{bad}.part").exists()
    assert not (data / VQA2_ZIPS[bad][0]).exists()
    assert (data / VQA2_ZIPS["v2_Questions_Train_mscoco.zip"][0]).exists()
    assert not (data / f".unzip-{bad}").exists()
    assert "summary: 4 fetched, 0 already in place, 1 failed" in proc.stdout

    (server.root / "vqa" / bad).write_bytes(good)  # the server mends
    again = run(server, data, "--only", "vqa2", "--min-free-gb", "0")
    assert again.returncode == 0, again.stderr
    assert len(server.gets(f"/vqa/{bad}")) == 2
    assert (data / VQA2_ZIPS[bad][0]).read_bytes() == expected_layout()[VQA2_ZIPS[bad][0]]
    assert "summary: 1 fetched, 4 already in place, 0 failed" in again.stdout
    assert f"{data}/{bad}.bad (a bad earlier copy) can be removed" in again.stdout


def test_corrupt_zip_in_place_is_moved_aside(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    name = "v2_Questions_Test_mscoco.zip"
    (data / name).write_bytes(b"PK\x03\x04 half a zip from a mirror")
    proc = run(server, data, "--only", "vqa2", "--min-free-gb", "0")
    assert proc.returncode == 1
    assert error_lines(proc)[0] == (
        f"error: {name}: corrupt zip: File is not a zip file (truncated, or not a zip); moved to {data}/{name}.bad, "
        "the next run downloads it afresh"
    )
    assert server.gets(f"/vqa/{name}") == []
    again = run(server, data, "--only", "vqa2", "--min-free-gb", "0")
    assert again.returncode == 0, again.stderr
    assert len(server.gets(f"/vqa/{name}")) == 1
    for member in VQA2_ZIPS[name]:
        assert (data / member).read_bytes() == expected_layout()[member]


def test_complete_zip_is_extracted_without_network(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    name = "v2_Questions_Test_mscoco.zip"
    data.mkdir()
    (data / name).write_bytes((server.root / "vqa" / name).read_bytes())
    stale = data / f".unzip-{name}"  # left by an interrupted unzip
    stale.mkdir()
    (stale / VQA2_ZIPS[name][0]).write_text("half written")
    proc = run(server, data, "--only", "vqa2", "--min-free-gb", "0")
    assert proc.returncode == 0, proc.stderr
    assert server.gets(f"/vqa/{name}") == []
    expected = expected_layout()
    for member in VQA2_ZIPS[name]:
        assert (data / member).read_bytes() == expected[member]
    assert not (data / name).exists() and not stale.exists()


def test_insufficient_space_refuses_before_downloading(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = run(server, data, "--min-free-gb", "1000000000")
    assert proc.returncode == 1
    (line,) = error_lines(proc)
    assert line.startswith(f"error: not enough free disk space for {data}: need about 1000000000 GB,")
    assert server.log == [] and not data.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "glove,imagez"],
         "error: unknown --only name 'imagez' (choose from glove,vqa2,vqacp,features,images,detector)"),
        (["--fast"], "error: unknown argument '--fast'"),
        (["--min-free-gb", "lots"], "error: --min-free-gb takes a whole number of GB, got 'lots'"),
        (["--data"], "error: --data needs a value"),
    ],
)
def test_usage_errors(server: Server, tmp_path: Path, args: list[str], message: str) -> None:
    proc = run(server, tmp_path / "data", *args)
    assert proc.returncode == 2
    assert proc.stderr == f"{message} (see download.sh --help)\n"
    assert server.log == [] and not (tmp_path / "data").exists()


def test_help_documents_the_overrides(server: Server, tmp_path: Path) -> None:
    proc = run(server, tmp_path / "data", "--help")
    assert proc.returncode == 0
    for word in ["--dry-run", "--only", "--min-free-gb", "VQA_CP_GLOVE_URL", "VQA_CP_VQA2_BASE",
                 "VQA_CP_VQACP_BASE", "VQA_CP_FEATURES_URL", "VQA_CP_RETRIES", "VQA_CP_RETRY_DELAY",
                 "VQA_CP_CONNECT_TIMEOUT"]:
        assert word in proc.stdout


def test_html_error_page_for_a_json_is_refused_then_refetched(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    name = VQACP_FILES[2]
    path = f"/vqacp/{name}"
    server.html.add(path)
    proc = run(server, data, "--only", "vqacp", "--min-free-gb", "0")
    assert proc.returncode == 1
    assert error_lines(proc) == [
        f"error: {name}: could not download {server.url(path)}: sent a bad file: an HTML or XML page (an error "
        f"page?), not the file; moved to {data}/{name}.bad, the next run downloads it afresh {VQACP_ADVICE}",
        f"error: failed: {name} (run download.sh again to retry; complete files are skipped)",
    ]
    assert len(server.gets(path)) == 1  # not retried within the run
    assert (data / f"{name}.bad").read_bytes() == HTML_PAGE
    assert not (data / name).exists() and not (data / f"{name}.part").exists()
    assert "summary: 3 fetched, 0 already in place, 1 failed" in proc.stdout

    again = run(server, data, "--only", "vqacp", "--min-free-gb", "0")  # still down: refused again
    assert again.returncode == 1 and len(server.gets(path)) == 2
    assert "summary: 0 fetched, 3 already in place, 1 failed" in again.stdout

    server.html.clear()
    mended = run(server, data, "--only", "vqacp", "--min-free-gb", "0")
    assert mended.returncode == 0, mended.stderr
    assert len(server.gets(path)) == 3
    assert (data / name).read_bytes() == expected_layout()[name]
    assert "summary: 1 fetched, 3 already in place, 0 failed" in mended.stdout


def test_json_in_place_that_does_not_parse_is_not_skipped(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    name = VQACP_FILES[0]
    (data / name).write_bytes(HTML_PAGE)  # what an earlier run without the check kept
    expected = expected_layout()
    for other in VQACP_FILES[1:]:
        (data / other).write_bytes(expected[other])
    proc = run(server, data, "--only", "vqacp", "--min-free-gb", "0")
    assert proc.returncode == 0, proc.stderr
    assert f"note: {data}/{name} is not valid JSON (Expecting value: line 1 column 1 (char 0)); moved to " \
           f"{data}/{name}.bad, downloading it again" in proc.stderr
    assert [r.path for r in server.gets()] == [f"/vqacp/{name}"]
    assert (data / name).read_bytes() == expected[name]
    assert (data / f"{name}.bad").read_bytes() == HTML_PAGE
    assert "summary: 1 fetched, 3 already in place, 0 failed" in proc.stdout


def _unwritable_system_folder() -> Path | None:
    """/sys/kernel, where even root cannot create a file (sysfs); None where that does not hold."""
    folder = Path("/sys/kernel")
    if not folder.is_dir():
        return None
    probe = folder / f".vqa_cp_probe_{os.getpid()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY)
    except OSError:
        return folder
    os.close(fd)
    probe.unlink()
    return None


def test_unwritable_data_folder_is_one_line_before_any_request(server: Server, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    # chmod does not stop root: a folder under a regular file cannot be created by anyone
    proc = run(server, blocker / "data", "--min-free-gb", "0")
    assert proc.returncode == 1
    assert proc.stderr == (f"error: cannot create --data {blocker}/data: {blocker} is a file, not a folder "
                           "(choose another --data)\n")
    proc = run(server, blocker, "--min-free-gb", "0")
    assert proc.returncode == 1
    assert proc.stderr == f"error: --data {blocker} is a file, not a folder (choose another --data)\n"
    assert server.log == []

    system = _unwritable_system_folder()
    if system is None:
        pytest.skip("/sys/kernel is writable here")
    proc = run(server, system, "--only", "vqacp", "--min-free-gb", "0")
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"error: --data {system} is not writable: ")
    assert "often down" not in line and "curl" not in line
    proc = run(server, system / "vqa_cp_data", "--only", "vqacp", "--min-free-gb", "0")
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"error: cannot create --data {system}/vqa_cp_data: ")
    assert server.log == [] and not (system / "vqa_cp_data").exists()


def test_local_write_failure_is_named_and_not_retried(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    name = VQACP_FILES[3]
    (data / f"{name}.part").mkdir()  # curl cannot write its output (exit code 23)
    proc = run(server, data, "--only", "vqacp", "--min-free-gb", "0", VQA_CP_RETRIES="3")
    assert proc.returncode == 1
    assert error_lines(proc)[0] == (
        f"error: {name}: cannot write {data}/{name}.part: {data}/{name}.part is a folder (a local problem, not "
        "the server's: not retried)"
    )
    # refused before any request (download.sh no longer asks for the size first: the GET's headers give it)
    assert [r for r in server.log if r.path == f"/vqacp/{name}"] == [] and "attempt 2" not in proc.stderr
    assert "often down" not in proc.stderr and "curl exit code" not in proc.stderr
    assert all((data / other).is_file() for other in VQACP_FILES[:3])  # the others still download


def test_full_disk_is_named_and_not_retried(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    name = VQACP_FILES[0]
    (data / f"{name}.part").symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full disk
    proc = run(server, data, "--only", "vqacp", "--min-free-gb", "0", VQA_CP_RETRIES="3")
    assert proc.returncode == 1
    assert error_lines(proc)[0] == (
        f"error: {name}: cannot write {data}/{name}.part: the disk is full (No space left on device) (a local "
        "problem, not the server's: not retried)"
    )
    assert len(server.gets(f"/vqacp/{name}")) == 1


def test_complete_or_oversized_part_needs_no_second_attempt(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    done, longer = VQACP_FILES[0], VQACP_FILES[1]
    expected = expected_layout()
    (data / f"{done}.part").write_bytes(expected[done])  # the server answers 416: nothing left to send
    (data / f"{longer}.part").write_bytes(expected[longer] + b"junk")  # 416 naming a smaller size: start again
    proc = run(server, data, "--only", "vqacp", "--min-free-gb", "0", VQA_CP_RETRIES="0")
    assert proc.returncode == 0, proc.stderr
    assert [r.range for r in server.gets(f"/vqacp/{done}")] == [f"bytes={len(expected[done])}-"]
    assert [r.range for r in server.gets(f"/vqacp/{longer}")] == [f"bytes={len(expected[longer]) + 4}-", None]
    assert (data / done).read_bytes() == expected[done] and (data / longer).read_bytes() == expected[longer]
    assert f"note: {data}/{longer}.part was larger than the server's file; starting it again" in proc.stderr
