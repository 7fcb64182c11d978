"""download.sh's sources: fallback from a failing first source to a second one on 127.0.0.1, the one-line
all-fail report, user mirrors (--mirror, --sources, VQA_CP_MIRRORS), the manifest's digests, and the call of
vqa_cp.verify.verify_raw (stubbed: its module is another helper's). In-process: vqa_cp.download.main."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from vqa_cp import copy_checks, download
from vqa_cp.transfer import Settings, _connection_reason, error_words

PAYLOAD = json.dumps([{"question_id": 1, "image_id": 9, "question": "what is it?"}]).encode()
HTML = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Please log in</body></html>"
NO_SUCH_BUCKET = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>NoSuchBucket</Code><Message>The specified "
                  b"bucket does not exist.</Message></Error>")
ACCESS_DENIED = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code><Message>Access denied."
                 b"</Message></Error>")
AZURE_409 = (b"\xef\xbb\xbf<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>PublicAccessNotPermitted</Code>"
             b"<Message>Public access is not permitted on this storage account.</Message></Error>")
ADVICE = download.load_manifest({}).advice["vqacp"]


@dataclass
class Site:
    """Routes of the local server: path -> (status, body, content type) or "stall"; plus a request log."""

    port: int = 0
    routes: dict[str, object] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def handler_for(site: Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            site.log.append(self.path)
            route = site.routes.get(self.path, (404, b"", "text/plain"))
            if route == "stall":  # headers, then silence
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                self.wfile.flush()
                site.stop.wait(10)
                return
            status, body, kind = route  # type: ignore[misc]
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def site() -> Iterator[Site]:
    state = Site()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(state))
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    state.stop.set()
    httpd.shutdown()
    httpd.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib's proxies come from os.environ: anything but 127.0.0.1 goes to a closed port."""
    proxy = f"http://127.0.0.1:{closed_port()}"
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


@pytest.fixture
def verify_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """A stand-in for vqa_cp.verify: accepts, notes one line, records its calls."""
    calls: list[tuple] = []

    def verify_raw(candidates: dict[str, Path], data_dir: Path, release: bool) -> SimpleNamespace:
        calls.append(("verify", {k: v.read_bytes() for k, v in candidates.items()}, data_dir, release))
        refused = {k: "3 questions in both splits, first 7" for k, v in candidates.items() if b"BOTH" in v.read_bytes()}
        return SimpleNamespace(refused=refused, notes=["1 answer differs from VQA v2 (first question 1)"])

    def remember(data_dir: Path, verdict: object, files: dict[str, Path]) -> None:
        calls.append(("remember", data_dir, dict(files)))

    monkeypatch.setattr(copy_checks, "verify_raw", verify_raw)
    monkeypatch.setattr(copy_checks, "remember_notes", remember)
    return calls


def write_manifest(tmp: Path, sources: list[str], **extra: object) -> Path:
    entry = {"group": "vqacp", "name": "a.json", "sources": sources, "check": "raw", "need_mb": 0,
             "outputs": [{"path": "a.json", "check": "raw"}], **extra}
    path = tmp / "manifest.json"
    path.write_text(json.dumps({"default_groups": ["vqacp"], "advice": {"vqacp": ADVICE}, "files": [entry]}))
    return path


def run(tmp: Path, manifest: Path, *args: str, **env: str) -> int:
    base = {"VQA_CP_MANIFEST": str(manifest), "VQA_CP_RETRIES": "0", "VQA_CP_RETRY_DELAY": "0",
            "VQA_CP_CONNECT_TIMEOUT": "5", "VQA_CP_STALL_SECONDS": "1"}
    return download.main(["--data", str(tmp / "data"), "--min-free-gb", "0", *args], {**base, **env})


FAILURES = {
    "404 NoSuchBucket": ((404, NO_SUCH_BUCKET, "application/xml"),
                         "HTTP 404 Not Found: NoSuchBucket: The specified bucket does not exist."),
    "403": ((403, ACCESS_DENIED, "application/xml"), "HTTP 403 Forbidden: AccessDenied: Access denied."),
    "409 Azure": ((409, AZURE_409, "application/xml"),
                  "HTTP 409 Conflict: PublicAccessNotPermitted: Public access is not permitted on this storage "
                  "account."),
    "refused": (None, "connection refused by 127.0.0.1"),
    "stall": ("stall", "stalled: no data for 1s"),
    "html 200": ((200, HTML, "text/html"), "sent a bad file: an HTML or XML page (an error page?), not the file"),
}


@pytest.mark.parametrize("kind", list(FAILURES))
def test_second_source_serves_when_the_first_fails(kind: str, site: Site, tmp_path: Path, verify_calls: list,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    route, reason = FAILURES[kind]
    first = f"http://127.0.0.1:{closed_port()}/a.json" if route is None else site.url("/first/a.json")
    if route is not None:
        site.routes["/first/a.json"] = route
    site.routes["/second/a.json"] = (200, PAYLOAD, "application/json")
    assert run(tmp_path, write_manifest(tmp_path, [first, site.url("/second/a.json")])) == 0
    out, err = capsys.readouterr()
    data = tmp_path / "data"
    assert (data / "a.json").read_bytes() == PAYLOAD
    assert f"note: a.json: {first} failed ({reason}" in err
    assert f"fetched a.json from {site.url('/second/a.json')}" in out
    assert "summary: 1 fetched, 0 already in place, 0 failed" in out
    assert not (data / "a.json.part").exists()
    assert (data / "a.json.bad").exists() == (kind == "html 200")
    # verify_raw saw the download as a release candidate, its note is printed and remembered for the file in place
    assert verify_calls[0][1] == {"a.json": PAYLOAD} and verify_calls[0][3] is True
    assert verify_calls[1] == ("remember", data, {"a.json": data / "a.json"})
    assert "note: 1 answer differs from VQA v2 (first question 1)" in err


def test_every_source_failing_is_one_line_with_each_reason(site: Site, tmp_path: Path, verify_calls: list,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    site.routes["/bucket/a.json"] = (404, NO_SUCH_BUCKET, "application/xml")
    site.routes["/azure/a.json"] = (409, AZURE_409, "application/xml")
    site.routes["/page/a.json"] = (200, HTML, "text/html")
    dead = f"http://127.0.0.1:{closed_port()}/a.json"
    urls = [site.url("/bucket/a.json"), dead, site.url("/azure/a.json"), site.url("/page/a.json")]
    assert run(tmp_path, write_manifest(tmp_path, urls)) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    bad = tmp_path / "data" / "a.json.bad"
    assert errors == [
        f"error: a.json: could not download {urls[0]}: HTTP 404 Not Found: NoSuchBucket: The specified bucket does "
        f"not exist.; nor {dead}: connection refused by 127.0.0.1; nor {urls[2]}: HTTP 409 Conflict: "
        "PublicAccessNotPermitted: Public access is not permitted on this storage account.; nor "
        f"{urls[3]}: sent a bad file: an HTML or XML page (an error page?), not the file; moved to {bad}, the next "
        f"run downloads it afresh ({ADVICE})",
        "error: failed: a.json (run download.sh again to retry; complete files are skipped)",
    ]
    assert verify_calls == []  # nothing good enough reached the deep check


def test_verify_refusal_is_a_bad_source(site: Site, tmp_path: Path, verify_calls: list,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    site.routes["/one/a.json"] = (200, b'[{"BOTH": 1}]', "application/json")
    site.routes["/two/a.json"] = (200, PAYLOAD, "application/json")
    assert run(tmp_path, write_manifest(tmp_path, [site.url("/one/a.json"), site.url("/two/a.json")])) == 0
    err = capsys.readouterr().err
    assert "sent a bad file: 3 questions in both splits, first 7" in err
    assert (tmp_path / "data" / "a.json").read_bytes() == PAYLOAD


@pytest.mark.parametrize("how", ["--mirror", "--sources", "VQA_CP_MIRRORS", "VQA_CP_SOURCES"])
def test_user_mirror_is_tried_first(how: str, site: Site, tmp_path: Path, verify_calls: list,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    site.routes["/mine/a.json"] = (200, PAYLOAD, "application/json")
    canonical = site.url("/canonical/a.json")  # would answer 404: never asked
    manifest = write_manifest(tmp_path, [canonical])
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps({"a.json": [site.url("/mine/a.json")]}))
    base = site.url("/mine/")
    args, env = {"--mirror": (["--mirror", base], {}), "--sources": (["--sources", str(sources)], {}),
                 "VQA_CP_MIRRORS": ([], {"VQA_CP_MIRRORS": base}),
                 "VQA_CP_SOURCES": ([], {"VQA_CP_SOURCES": str(sources)})}[how]
    assert run(tmp_path, manifest, *args, **env) == 0
    assert site.log == ["/mine/a.json"]
    assert f"fetched a.json from {site.url('/mine/a.json')}" in capsys.readouterr().out


def test_sources_file_naming_an_unknown_file_is_a_usage_error(tmp_path: Path, capsys) -> None:
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps({"b.json": "http://127.0.0.1:1/b.json"}))
    with pytest.raises(download.VQAError, match="unknown file name 'b.json'"):
        run(tmp_path, write_manifest(tmp_path, ["http://127.0.0.1:1/a.json"]), "--sources", str(sources))


def test_manifest_digest_refuses_a_wrong_file_and_is_remembered(site: Site, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    weights = b"\x80\x02weights" * 100
    right = hashlib.sha256(weights).hexdigest()
    site.routes["/w.bin"] = (200, weights, "application/octet-stream")
    entry = {"group": "detector", "name": "w.bin", "path": "detector/w.bin", "sources": [site.url("/w.bin")],
             "size": len(weights), "sha256": "0" * 64, "check": "none",
             "outputs": [{"path": "detector/w.bin", "check": "none"}]}
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"default_groups": ["detector"], "files": [entry]}))
    assert run(tmp_path, manifest) == 1
    data = tmp_path / "data"
    assert f"sent a bad file: sha256 {right}, not the release's {'0' * 64}" in capsys.readouterr().err
    assert (data / "detector" / "w.bin.bad").read_bytes() == weights and not (data / "detector" / "w.bin").exists()

    manifest.write_text(json.dumps({"default_groups": ["detector"], "files": [{**entry, "sha256": right}]}))
    assert run(tmp_path, manifest) == 0
    assert (data / "detector" / "w.bin").read_bytes() == weights
    calls = []
    real = copy_checks.compute_digests
    monkeypatch.setattr(copy_checks, "compute_digests", lambda p: calls.append(p) or real(p))
    assert run(tmp_path, manifest) == 0  # in place: its digest is remembered, not read again
    assert calls == [] and "skip w.bin: already in place" in capsys.readouterr().out
    (data / "detector" / "w.bin").write_bytes(weights[::-1])  # replaced by other content: read, refused, refetched
    assert run(tmp_path, manifest) == 0
    assert len(calls) == 2 and (data / "detector" / "w.bin").read_bytes() == weights
    assert "has sha256" in capsys.readouterr().err


def test_error_words_and_connection_reasons() -> None:
    assert error_words(NO_SUCH_BUCKET) == "NoSuchBucket: The specified bucket does not exist."
    assert error_words(HTML) == "Sign in"
    assert error_words(b"  plain   words " * 20, limit=3) == "plain words plain"
    settings = Settings(connect_timeout=7, stall_seconds=1, retries=0, retry_delay=0)
    url = "https://example.invalid/x"
    assert _connection_reason(socket.gaierror(-2, "Name or service not known"), url, settings) == (
        "DNS failure: cannot resolve example.invalid")
    assert _connection_reason(TimeoutError(), url, settings) == "timed out: no connection to example.invalid within 7s"


def test_the_manifest_lists_every_group_with_known_sizes() -> None:
    manifest = download.load_manifest({})
    assert manifest.groups == ["glove", "vqa2", "vqacp", "features", "images", "detector"]
    by_name = {item.name: item for item in manifest.items}
    assert by_name["glove.6B.zip"].size == 862_182_613
    assert by_name["glove.6B.zip"].sources[1] == "https://huggingface.co/stanfordnlp/glove/resolve/main/glove.6B.zip"
    assert (by_name["train2014.zip"].size, by_name["train2014.zip"].md5) == (
        13_510_573_713, "0da8c0bd3d6becc4dcb32757491aca88")
    assert by_name["pytorch_model.bin"].path == "detector/pytorch_model.bin"
    assert by_name["trainval_36.zip"].sources[0].startswith("https://storage.googleapis.com/up-down-attention/")
    env = download.load_manifest({"VQA_CP_VQACP_BASE": "http://127.0.0.1:1/cp/"})
    assert env.item("vqacp_v2_test_questions.json").sources == ["http://127.0.0.1:1/cp/vqacp_v2_test_questions.json"]


def test_images_and_detector_by_the_real_manifest_entries(site: Site, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`--only images,detector` with the manifest's own entries (paths, checks, env bases), their sizes and digests
    swapped for those of tiny stand-ins: the COCO zips stay zipped under images/, the hub files land in detector/,
    and a file whose md5 differs is refused."""
    real = json.loads((Path(download.__file__).parent / "sources.json").read_text())
    payloads = {"train2014.zip": b"PK-train" * 50, "val2014.zip": b"PK-val" * 40,
                "config.yaml": b"MODEL:\n  DEVICE: cpu\n", "pytorch_model.bin": b"\x80\x02weights" * 30}
    entries = []
    for entry in real["files"]:
        if entry["group"] in ("images", "detector"):
            body = payloads[entry["name"]]
            site.routes[f"/{entry['group']}/{entry['name']}"] = (200, body, "application/octet-stream")
            swapped = {k: v for k, v in entry.items() if k not in ("size", "md5", "sha256")}
            if "md5" in entry:
                swapped["md5"] = hashlib.md5(body).hexdigest()
            if "sha256" in entry:
                swapped["sha256"] = hashlib.sha256(body).hexdigest()
            entries.append({**swapped, "size": len(body)} if "size" in entry else swapped)
    assert sorted(e["name"] for e in entries) == sorted(payloads)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({**real, "files": entries}))
    bases = {"VQA_CP_IMAGES_BASE": site.url("/images"), "VQA_CP_DETECTOR_BASE": site.url("/detector")}
    assert run(tmp_path, manifest, "--only", "images,detector", **bases) == 0
    data = tmp_path / "data"
    for entry in entries:
        assert (data / entry["path"]).read_bytes() == payloads[entry["name"]]
    assert f"fetched train2014.zip from {site.url('/images/train2014.zip')}" in capsys.readouterr().out

    (data / "images" / "val2014.zip").unlink()
    site.routes["/images/val2014.zip"] = (200, b"PK-other" * 30, "application/octet-stream")
    assert run(tmp_path, manifest, "--only", "images", **bases) == 1
    assert "val2014.zip" in capsys.readouterr().err and not (data / "images" / "val2014.zip").exists()


def test_a_truncated_json_in_place_is_fetched_again(site: Site, tmp_path: Path, verify_calls: list,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    site.routes["/a.json"] = (200, PAYLOAD, "application/json")
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.json").write_bytes(PAYLOAD[: len(PAYLOAD) // 2])  # starts like JSON, does not parse
    assert run(tmp_path, write_manifest(tmp_path, [site.url("/a.json")])) == 0
    assert (data / "a.json").read_bytes() == PAYLOAD
    assert (data / "a.json.bad").read_bytes() == PAYLOAD[: len(PAYLOAD) // 2]
    assert "is not valid JSON (" in capsys.readouterr().err
