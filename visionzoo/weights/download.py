"""Hash-checked, atomic downloads into the visionzoo cache.

The cache is ``$VISIONZOO_CACHE`` or ``~/.cache/visionzoo``. A file is written to a
temporary name in the cache folder, its length and SHA-256 are checked, and only then
is it renamed into place; on any error the temporary file is removed, so the cache
never holds a partial or unverified file.
"""

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request

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


def _server_sha256(headers):
    """A SHA-256 the server states for the body (Hugging Face LFS: X-Linked-ETag)."""
    for name in ("X-Linked-ETag", "ETag"):
        value = (headers.get(name) or "").strip().strip('"')
        if value.startswith("W/"):
            continue
        if len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower()):
            return value.lower()
    return None


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
    if os.path.exists(final):
        if sha256 is None or sha256_of(final) == sha256.lower():
            return final
        os.remove(final)  # stale or corrupted cache entry: fetch again

    fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=directory)
    try:
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except urllib.error.HTTPError as e:
            raise DownloadError(f"Downloading {url} failed: HTTP {e.code} {e.reason}.") from e
        except (urllib.error.URLError, OSError) as e:
            raise DownloadError(f"Downloading {url} failed: {e}.") from e
        with response, os.fdopen(fd, "wb") as out:
            fd = None
            length = response.headers.get("Content-Length")
            expected_len = int(length) if length and length.isdigit() else None
            server_hash = _server_sha256(response.headers)
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
            raise DownloadError(
                f"Downloaded {url} but its SHA-256 is {digest}, expected {wanted}; "
                "the file was discarded.")
        os.replace(tmp, final)
        return final
    except BaseException:
        if fd is not None:
            os.close(fd)
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
