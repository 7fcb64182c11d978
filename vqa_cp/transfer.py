"""One HTTP(S) download into NAME.part, resumable, with a one-line reason for every way a source can fail.

urllib (proxies from the environment, redirects); a stalled transfer ends after `stall_seconds` with less
than 1 KB/s, a connection that does not open after `connect_timeout`.
"""

from __future__ import annotations

import errno
import html
import http.client
import re
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

BLOCK = 1 << 20
MIN_RATE = 1024  # bytes/s below which a transfer counts as stalled
ERROR_BODY_BYTES = 4096
USER_AGENT = "vqa_cp-download/1"


@dataclass(frozen=True)
class Settings:
    connect_timeout: float
    stall_seconds: float
    retries: int
    retry_delay: float


class SourceFailed(Exception):
    """This source did not serve the file; `retriable`: another attempt at it may succeed."""

    def __init__(self, reason: str, retriable: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retriable = retriable


class LocalWriteFailed(Exception):
    """Writing the download on this machine failed: no source can help, never retried."""


def error_words(body: bytes, limit: int = 12) -> str:
    """The first words of an error body: an XML <Code> (S3, GCS, Azure) and <Message>, an HTML <title>, or text."""
    text = body.decode("utf-8", "replace")
    code = re.search(r"<Code>\s*([^<]+?)\s*</Code>", text)
    message = re.search(r"<Message>\s*([^<]+?)\s*</Message>", text)
    if code:
        words = code.group(1) + (f": {message.group(1)}" if message else "")
    else:
        title = re.search(r"<title[^>]*>\s*([^<]+?)\s*</title>", text, re.IGNORECASE)
        words = title.group(1) if title else re.sub(r"<[^>]*>", " ", text)
    words = " ".join(html.unescape(words).split()[:limit])
    return words


def _connection_reason(exc: BaseException, url: str, settings: Settings) -> str:
    """One line for a failure before any response: DNS, refused, timeout, TLS."""
    host = urllib.request.urlparse(url).hostname
    if isinstance(exc, socket.gaierror):
        return f"DNS failure: cannot resolve {host}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {host}"
    if isinstance(exc, TimeoutError):
        return f"timed out: no connection to {host} within {settings.connect_timeout:g}s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate of {host} rejected: {exc.verify_message}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot connect to {host}: {exc.strerror}"
    return f"cannot connect to {host}: {exc}"


def _open(url: str, have: int, settings: Settings) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=settings.connect_timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:
            return exc  # type: ignore[return-value]  # the caller reads Content-Range
        body = b""
        try:
            body = exc.read(ERROR_BODY_BYTES)
        except (OSError, http.client.HTTPException):
            pass
        words = error_words(body)
        reason = f"HTTP {exc.code} {exc.reason}" + (f": {words}" if words else "")
        raise SourceFailed(reason, retriable=exc.code >= 500 or exc.code in (408, 429)) from None
    except urllib.error.URLError as exc:
        raise SourceFailed(_connection_reason(exc.reason if isinstance(exc.reason, BaseException) else exc,
                                              url, settings)) from None
    except (OSError, http.client.HTTPException) as exc:
        raise SourceFailed(_connection_reason(exc, url, settings)) from None


def _total_size(response: http.client.HTTPResponse, have: int) -> tuple[int | None, bool]:
    """(size of the whole file or None, whether the response resumes at `have`)."""
    if response.status == 206:
        match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != have:
            raise SourceFailed("the server answered a resume with a wrong range", retriable=False)
        return (None if match.group(2) == "*" else int(match.group(2))), True
    length = response.headers.get("Content-Length")
    return (int(length) if length and length.isdigit() else None), False


def local_cause(exc: OSError, part: Path, data_dir: Path) -> str:
    """Why writing `part` failed, in a few words."""
    if part.is_dir():
        return f"{part} is a folder"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full ({exc.strerror})"
    return exc.strerror or str(exc)


def _set_read_timeout(response: http.client.HTTPResponse, seconds: float) -> None:
    """Reads wait `seconds` (the stall limit) instead of the connect timeout, where the socket is reachable."""
    sock = getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
    if isinstance(sock, socket.socket):
        sock.settimeout(seconds)


def _copy_body(response: http.client.HTTPResponse, out, bar: tqdm, settings: Settings) -> int:
    """Copy the body to `out`; stall when a window of `stall_seconds` brings under MIN_RATE bytes/s."""
    got = 0
    window_start, window_bytes = time.monotonic(), 0
    while True:
        try:
            block = response.read(BLOCK if settings.stall_seconds >= 1 else 64 * 1024)
        except TimeoutError:
            raise SourceFailed(f"stalled: no data for {settings.stall_seconds:g}s") from None
        except http.client.IncompleteRead as exc:
            out.write(exc.partial)
            got += len(exc.partial)
            raise SourceFailed("transfer cut short") from None
        except (OSError, http.client.HTTPException) as exc:
            raise SourceFailed(f"transfer cut short ({exc})") from None
        if not block:
            return got
        out.write(block)
        got += len(block)
        bar.update(len(block))
        window_bytes += len(block)
        elapsed = time.monotonic() - window_start
        if elapsed >= settings.stall_seconds:
            if window_bytes < MIN_RATE * elapsed:
                raise SourceFailed(f"stalled: under 1 KB/s for {settings.stall_seconds:g}s")
            window_start, window_bytes = time.monotonic(), 0


def fetch_once(url: str, part: Path, data_dir: Path, settings: Settings) -> None:
    """One attempt: GET `url` into `part` (resuming it); the file is complete when this returns."""
    if part.is_dir():
        raise LocalWriteFailed(f"cannot write {part}: {part} is a folder")
    have = part.stat().st_size if part.is_file() else 0
    response = _open(url, have, settings)
    with response:
        if response.status == 416:  # the part already holds the whole file, or more
            match = re.match(r"bytes \*/(\d+)", response.headers.get("Content-Range", ""))
            if match and int(match.group(1)) == have:
                return
            part.unlink()
            print(f"note: {part} was larger than the server's file; starting it again", file=sys.stderr)
            return fetch_once(url, part, data_dir, settings)  # no part now: no range, no 416
        total, resumed = _total_size(response, have)
        if have and not resumed:
            have = 0  # the server sent the whole file
        elif have:
            print(f"resuming {part.name.removesuffix('.part')} at {have} bytes")
        _set_read_timeout(response, settings.stall_seconds)
        try:
            part.parent.mkdir(parents=True, exist_ok=True)
            out = open(part, "ab" if have else "wb")  # noqa: SIM115 (closed below, errors named)
        except OSError as exc:
            raise LocalWriteFailed(f"cannot write {part}: {local_cause(exc, part, data_dir)}") from None
        try:
            with out, tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                           desc=part.name.removesuffix(".part"), disable=None, leave=False) as bar:
                _copy_body(response, out, bar, settings)
        except OSError as exc:
            raise LocalWriteFailed(f"cannot write {part}: {local_cause(exc, part, data_dir)}") from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise SourceFailed(f"transfer cut short: {size} of {total} bytes")


def fetch(url: str, part: Path, data_dir: Path, settings: Settings, name: str) -> None:
    """fetch_once with up to `settings.retries` more attempts after a retriable failure."""
    attempts = settings.retries + 1
    for attempt in range(1, attempts + 1):
        try:
            fetch_once(url, part, data_dir, settings)
            return
        except SourceFailed as exc:
            if "cut short" in exc.reason and part.is_file():
                exc.reason += f"; {part} kept for resuming"
            if not exc.retriable or attempt == attempts:
                raise
            print(f"note: {name}: {exc.reason}; attempt {attempt + 1} of {attempts} in {settings.retry_delay:g}s",
                  file=sys.stderr)
            time.sleep(settings.retry_delay)
