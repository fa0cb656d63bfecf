"""Hash-checked, atomic downloads into the visionzoo cache.

The cache is ``$VISIONZOO_CACHE`` or ``~/.cache/visionzoo``. A file is written to a
temporary name in the cache folder, its length and SHA-256 are checked, and only then
is it renamed into place; on any error the temporary file is removed, so the cache
never holds a partial or unverified file.

The SHA-256 checked is, in order: the one the registry pins for the file, the one the
server states (Hugging Face's ``X-Linked-ETag``), or, for files that have neither
(GitHub release assets), the digest recorded beside the file on its first download
(``<file>.sha256``, trust on first use, with a warning) against which every later use
is checked.
"""

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
import warnings

from tqdm.auto import tqdm


class DownloadError(RuntimeError):
    """A download failed or did not verify; nothing was left in the cache."""


def cache_dir():
    path = os.environ.get("VISIONZOO_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "visionzoo")
    os.makedirs(path, exist_ok=True)
    return path


def sha256_of(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _server_sha256(headers, names=("X-Linked-ETag", "ETag")):
    """A SHA-256 the server states for the body (Hugging Face LFS: X-Linked-ETag)."""
    for name in names:
        value = (headers.get(name) or "").strip()
        if value.startswith("W/"):
            continue
        value = value.strip('"')
        if len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower()):
            return value.lower()
    return None


class _DigestRecordingRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does and keeps the digests stated on the way.

    Hugging Face answers ``/resolve/`` with a redirect to its CDN and states the
    file's SHA-256 (``X-Linked-ETag``) on that redirect, not on the final response.
    """

    def __init__(self):
        super().__init__()
        self.digests = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        digest = _server_sha256(headers, names=("X-Linked-ETag",))
        if digest:
            self.digests.append(digest)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def download(url, sha256=None, filename=None, directory=None, progress=True, timeout=60):
    """Download ``url`` into the cache (once) and return the local path.

    Args:
        url: str. http(s) or file URL.
        sha256: str or None. Expected SHA-256 hex digest. When None, the digest the
            server states (Hugging Face's X-Linked-ETag) is checked if there is one.
        filename: str or None. Cache file name (default: last URL component).
        directory: str or None. Cache folder (default: :func:`cache_dir`).
        progress: bool. Show a progress bar.

    Raises:
        DownloadError: HTTP error, truncated body, or hash mismatch. The cache is
            left without the file.
    """
    directory = directory or cache_dir()
    os.makedirs(directory, exist_ok=True)
    filename = filename or os.path.basename(url.split("?")[0]) or "download"
    final = os.path.join(directory, filename)
    sidecar = final + ".sha256"
    if os.path.exists(final):
        known = sha256 or _read_sidecar(sidecar)
        if known is None or sha256_of(final) == known.lower():
            return final
        os.remove(final)  # stale or corrupted cache entry: fetch again

    fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=directory)
    try:
        redirects = _DigestRecordingRedirectHandler()
        try:
            response = urllib.request.build_opener(redirects).open(url, timeout=timeout)
        except urllib.error.HTTPError as e:
            e.close()
            raise DownloadError(f"Downloading {url} failed: HTTP {e.code} {e.reason}.") from e
        except (urllib.error.URLError, OSError) as e:
            raise DownloadError(f"Downloading {url} failed: {e}.") from e
        with response, os.fdopen(fd, "wb") as out:
            fd = None
            length = response.headers.get("Content-Length")
            expected_len = int(length) if length and length.isdigit() else None
            # X-Linked-ETag on a redirect or the final response, else a SHA-256 ETag.
            server_hash = (_server_sha256(response.headers, names=("X-Linked-ETag",))
                           or (redirects.digests[-1] if redirects.digests else None)
                           or _server_sha256(response.headers, names=("ETag",)))
            h = hashlib.sha256()
            received = 0
            bar = tqdm(total=expected_len, unit="B", unit_scale=True, desc=filename,
                       disable=not progress, leave=False)
            with bar:
                while True:
                    try:
                        block = response.read(1 << 20)
                    except (OSError, http.client.HTTPException) as e:  # dropped mid-body
                        raise DownloadError(
                            f"Downloading {url} failed after {received} bytes: {e}.") from e
                    if not block:
                        break
                    out.write(block)
                    h.update(block)
                    received += len(block)
                    bar.update(len(block))
        if expected_len is not None and received != expected_len:
            raise DownloadError(
                f"Downloading {url} was truncated: got {received} of {expected_len} bytes.")
        digest = h.hexdigest()
        wanted = (sha256 or server_hash or "").lower() or None
        if wanted is not None and digest != wanted:
            source = "the expected" if sha256 else "the server-stated"
            raise DownloadError(
                f"Downloaded {url} but its SHA-256 is {digest}, not {source} {wanted}; "
                "the file was discarded.")
        if wanted is None:
            warnings.warn(
                f"{url} has no published SHA-256 and the server stated none; its digest "
                f"{digest} was recorded on this first download and every later use of the "
                "cached file is checked against it.", stacklevel=2)
        if sha256 is None:  # remember the digest so later uses of the cache are checked
            with open(sidecar + ".part", "w") as f:
                f.write(digest + "\n")
        os.replace(tmp, final)
        if sha256 is None:
            os.replace(sidecar + ".part", sidecar)
        return final
    except BaseException:
        if fd is not None:
            os.close(fd)
        for leftover in (tmp, sidecar + ".part"):
            if os.path.exists(leftover):
                os.remove(leftover)
        raise


def _read_sidecar(path):
    """The digest recorded beside a cached file on its first download, if any."""
    try:
        with open(path) as f:
            value = f.read().strip().lower()
    except OSError:
        return None
    return value if len(value) == 64 else None
