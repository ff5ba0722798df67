"""Downloads of a source: https that never redirects down to http, capped in size and time,
only a complete (and, when pinned, verified) download cached per URL."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import ssl
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.client import HTTPMessage
from pathlib import Path
from typing import IO

from tqdm import tqdm

log = logging.getLogger("ingest")


class SourceError(RuntimeError):
    """The configured source cannot be found, fetched or verified."""


GiB = 1 << 30
CHUNK = 1 << 20  # bytes read and written at a time


@dataclass(frozen=True)
class Limits:
    """What fetching and extracting a source may cost before it is refused.

    The defaults leave ample room for the 1.2 GB Kaggle zip (about 2.3 GB and
    17,600 members extracted); tests pass smaller values.
    """

    max_download_bytes: int = 20 * GiB  # refused when Content-Length is larger; aborted past it
    download_deadline_s: float = 6 * 3600  # the whole download, checked after every read
    read_timeout_s: float = 60  # connect, and each read that gets no data at all
    max_archive_members: int = 200_000
    max_extracted_bytes: int = 20 * GiB  # declared in the headers, then counted while writing


LIMITS = Limits()


def is_url(source: str) -> bool:
    """Whether `ingest.source` is an http(s) URL rather than a local path."""
    return urllib.parse.urlsplit(source).scheme in ("http", "https")


def redact_url(url: str) -> str:
    """The URL without user info, query and fragment, where tokens hide; a path is kept as is."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _scrub(text: str, url: str) -> str:
    """An error text with the URL's secret parts (user info, query, fragment) masked."""
    parts = urllib.parse.urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    for secret in sorted({userinfo, parts.query, parts.fragment} - {""}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks (hashlib.file_digest)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


class SafeRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only, and never from https down to plain http."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        """The redirected request, as urllib makes it; SourceError for a refused scheme."""
        old = urllib.parse.urlsplit(req.full_url).scheme
        new = urllib.parse.urlsplit(newurl).scheme
        if new not in ("http", "https") or (old == "https" and new != "https"):
            fp.close()
            raise SourceError(
                f"refused the redirect ({code}) from {redact_url(req.full_url)} to "
                f"{redact_url(newurl)}: a download that starts on https stays on https"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def download_path(url: str, downloads: Path) -> Path:
    """Where a URL is cached: downloads/<sha256(url)[:16]>/<file name>, one folder per URL."""
    name = Path(urllib.parse.urlsplit(url).path).name or "source"
    return downloads / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def copy_response(
    response: http.client.HTTPResponse,
    out: IO[bytes],
    shown: str,
    limits: Limits,
    deadline: float,
) -> tuple[int, str]:
    """Copy a response body to `out` under the caps; returns (bytes received, their sha256).

    `deadline` is a time.monotonic() value, checked after every read.
    """
    digest = hashlib.sha256()
    received = 0
    name = Path(urllib.parse.urlsplit(shown).path).name
    with tqdm(total=response.length, unit="B", unit_scale=True, desc=f"download {name}") as bar:
        while block := response.read1(CHUNK):  # what has arrived; never waits for a full CHUNK
            received += len(block)
            if received > limits.max_download_bytes:
                raise SourceError(
                    f"{shown}: more than {limits.max_download_bytes:,} bytes, the download cap "
                    "(pneumonia.data.download.Limits.max_download_bytes)"
                )
            if time.monotonic() > deadline:
                raise SourceError(
                    f"{shown}: not downloaded within {limits.download_deadline_s:g} s "
                    f"({received:,} bytes received), the deadline "
                    "(pneumonia.data.download.Limits.download_deadline_s)"
                )
            out.write(block)
            digest.update(block)
            bar.update(len(block))
    return received, digest.hexdigest()


def stream_download(
    url: str, out: IO[bytes], limits: Limits, ssl_context: ssl.SSLContext | None = None
) -> str:
    """Write the body of a GET of `url` to `out`; returns its sha256.

    Raises SourceError unless the body is complete (as many bytes as
    Content-Length announced; a chunked body up to its last chunk), within
    `limits.max_download_bytes` and received within `limits.download_deadline_s`
    (checked after each read, a read waiting at most `limits.read_timeout_s`).
    Redirects are followed by SafeRedirectHandler.
    """
    shown = redact_url(url)
    deadline = time.monotonic() + limits.download_deadline_s
    opener = urllib.request.build_opener(
        SafeRedirectHandler, urllib.request.HTTPSHandler(context=ssl_context)
    )
    try:
        with opener.open(url, timeout=limits.read_timeout_s) as response:
            announced = response.length  # Content-Length; None when chunked or absent
            if announced is not None and announced > limits.max_download_bytes:
                raise SourceError(
                    f"{shown}: Content-Length is {announced:,} bytes, over the download cap of "
                    f"{limits.max_download_bytes:,} bytes "
                    "(pneumonia.data.download.Limits.max_download_bytes)"
                )
            received, digest = copy_response(response, out, shown, limits, deadline)
    except (OSError, http.client.HTTPException, ValueError) as error:
        # Raised without its cause: the cause's text may hold the URL's token.
        detail = _scrub(f"{type(error).__name__}: {error}", url)
        raise SourceError(f"could not download {shown}: {detail}") from None
    if announced is not None and received != announced:
        raise SourceError(
            f"{shown}: the server announced {announced:,} bytes (Content-Length) but sent "
            f"{received:,}; the download is incomplete"
        )
    return digest


def download(
    url: str,
    downloads: Path,
    expected_sha256: str | None = None,
    limits: Limits = LIMITS,
    ssl_context: ssl.SSLContext | None = None,
) -> Path:
    """Download a URL into its folder of `downloads`, once, with a progress bar.

    Only a complete download (and, when `expected_sha256` is set, one with
    that sha256) gets the final name; anything else is removed. A cached file
    is reused when it matches `expected_sha256`, downloaded again when not.
    """
    shown = redact_url(url)
    if not is_url(url):
        raise SourceError(f"{shown}: only http and https URLs are downloaded")
    target = download_path(url, downloads)
    if target.exists():
        if expected_sha256 is None:
            log.info("using cached download %s of %s (unverified)", target, shown)
            return target
        if file_digest(target, "sha256") == expected_sha256.lower():
            log.info("using cached download %s of %s (sha256 verified)", target, shown)
            return target
        log.warning("cached %s does not match ingest.sha256: downloading %s again", target, shown)
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f"{target.name}.", suffix=".part", dir=target.parent)
    partial = Path(name)
    log.info("downloading %s", shown)
    try:
        with os.fdopen(handle, "wb") as out:
            actual = stream_download(url, out, limits, ssl_context)
        if expected_sha256 is not None and actual != expected_sha256.lower():
            raise SourceError(
                f"{shown}: sha256 is {actual}, expected {expected_sha256} (ingest.sha256). "
                "The download is corrupt or not the file configured."
            )
        partial.replace(target)  # only a complete, verified download gets the final name
    finally:
        partial.unlink(missing_ok=True)
    log.info("downloaded %s to %s (sha256 %s)", shown, target, actual)
    return target
