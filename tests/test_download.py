"""Downloads: hash checks, truncation, HTTP errors, server-stated digests, the cache,
and pretrained weights end to end through ``create_model``.

Everything is served by a local ``http.server`` on 127.0.0.1 (a random free port);
no test touches the internet.
"""

import torch  # noqa: F401  (torch/torchvision before TensorFlow: see conftest.py)
import torchvision  # noqa: F401

import collections
import dataclasses
import hashlib
import http.server
import os
import threading

import numpy as np
import pytest

import visionzoo
from visionzoo import registry
from visionzoo.weights.download import DownloadError, download

BODY = bytes(range(256)) * 4096 + b"visionzoo"  # ~1 MiB, more than one read block
SHA = hashlib.sha256(BODY).hexdigest()
WRONG_SHA = hashlib.sha256(b"something else").hexdigest()


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 with fixed routes; counts requests per path.

    A route is a dict: ``body`` (bytes), optional ``status`` (default 200),
    ``headers`` (extra headers), ``length`` (the Content-Length to announce; when it
    exceeds the body the connection is closed early), ``location`` (a redirect).
    """

    def __init__(self):
        self.routes = {}
        self.hits = collections.Counter()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] += 1
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404, "Not Found")
                    return
                body = route.get("body", b"")
                self.send_response(route.get("status", 200))
                for name, value in route.get("headers", {}).items():
                    self.send_header(name, value)
                if "location" in route:
                    self.send_header("Location", route["location"])
                self.send_header("Content-Length", str(route.get("length", len(body))))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True  # a short body ends with the connection

            def log_message(self, *args):  # keep the test output quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    with LocalServer() as s:
        s.routes.update({
            "/good.bin": {"body": BODY},
            "/truncated.bin": {"body": BODY[:5000], "length": len(BODY)},
            "/hf/good.bin": {"body": BODY, "headers": {"X-Linked-ETag": f'"{SHA}"'}},
            "/hf/bad.bin": {"body": BODY, "headers": {"X-Linked-ETag": f'"{WRONG_SHA}"'}},
            # Hugging Face style: the digest is stated on the redirect to the CDN.
            "/resolve/good.bin": {"status": 302, "location": "/cdn/blob",
                                  "headers": {"X-Linked-ETag": f'"{SHA}"'}},
            "/resolve/bad.bin": {"status": 302, "location": "/cdn/blob",
                                 "headers": {"X-Linked-ETag": f'"{WRONG_SHA}"'}},
            "/cdn/blob": {"body": BODY, "headers": {"ETag": '"not-a-sha256"'}},
        })
        yield s


def cache_files(directory):
    """Everything in the cache folder, hidden ``.part`` files included."""
    return sorted(os.listdir(directory))


def test_good_file_downloads_verifies_and_is_cached(server, tmp_path):
    path = download(server.url("/good.bin"), sha256=SHA, directory=str(tmp_path),
                    progress=False)
    assert path == str(tmp_path / "good.bin")
    assert open(path, "rb").read() == BODY
    assert cache_files(tmp_path) == ["good.bin"]
    again = download(server.url("/good.bin"), sha256=SHA, directory=str(tmp_path),
                     progress=False)
    assert again == path
    assert server.hits["/good.bin"] == 1


def test_cache_dir_from_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    path = download(server.url("/good.bin"), sha256=SHA.upper(), filename="renamed.bin",
                    progress=False)
    assert path == str(tmp_path / "cache" / "renamed.bin")
    assert open(path, "rb").read() == BODY


@pytest.mark.parametrize("route, sha256, message", [
    ("/good.bin", WRONG_SHA, r"SHA-256 is [0-9a-f]{64}, not the expected .*discarded"),
    ("/truncated.bin", None, r"truncated: got 5000 of \d+ bytes|failed after 5000 bytes"),
    ("/truncated.bin", SHA, r"truncated: got 5000 of \d+ bytes|failed after 5000 bytes"),
    ("/missing.bin", None, r"HTTP 404"),
    ("/hf/bad.bin", None, r"not the server-stated " + WRONG_SHA),
    ("/resolve/bad.bin", None, r"not the server-stated " + WRONG_SHA),
])
def test_failures_raise_and_leave_nothing(server, tmp_path, route, sha256, message):
    with pytest.raises(DownloadError, match=message) as info:
        download(server.url(route), sha256=sha256, directory=str(tmp_path), progress=False)
    assert server.url(route) in str(info.value)
    assert cache_files(tmp_path) == []


@pytest.mark.parametrize("route", ["/hf/good.bin", "/resolve/good.bin"])
def test_server_stated_digest_is_accepted(server, tmp_path, route):
    path = download(server.url(route), directory=str(tmp_path), progress=False)
    assert open(path, "rb").read() == BODY


def test_unreachable_server(tmp_path):
    with LocalServer() as s:
        url = s.url("/good.bin")
    with pytest.raises(DownloadError, match=r"failed"):
        download(url, directory=str(tmp_path), progress=False, timeout=5)
    assert cache_files(tmp_path) == []


def test_corrupted_cache_entry_is_downloaded_again(server, tmp_path):
    path = download(server.url("/good.bin"), sha256=SHA, directory=str(tmp_path),
                    progress=False)
    with open(path, "r+b") as f:  # flip one byte in the cached file
        f.seek(100)
        f.write(bytes([BODY[100] ^ 0xFF]))
    again = download(server.url("/good.bin"), sha256=SHA, directory=str(tmp_path),
                     progress=False)
    assert again == path
    assert open(again, "rb").read() == BODY
    assert server.hits["/good.bin"] == 2
    assert cache_files(tmp_path) == ["good.bin"]


def test_failed_refetch_of_a_corrupted_cache_entry_leaves_nothing(server, tmp_path):
    (tmp_path / "truncated.bin").write_bytes(b"stale")
    with pytest.raises(DownloadError):
        download(server.url("/truncated.bin"), sha256=SHA, directory=str(tmp_path),
                 progress=False)
    assert cache_files(tmp_path) == []


# --------------------------------------------------------------------------------------
# End to end: registry weights tag -> download -> strict conversion -> same logits
# --------------------------------------------------------------------------------------

NAME = "poolformerv2_s12"


@pytest.fixture(scope="module")
def timm_checkpoint(tmp_path_factory):
    """A randomised timm poolformerv2_s12 saved with torch.save, plus its reference run."""
    from visionzoo.weights.timm_reference import reference

    x, y, state, _ = reference(NAME, size=(64, 64))
    path = tmp_path_factory.mktemp("timm") / f"{NAME}.pth"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    data = path.read_bytes()
    return x, y, data


def point_weights_at(monkeypatch, url, sha256):
    reg = registry._registry()
    variant = reg[NAME]
    monkeypatch.setitem(reg, NAME, dataclasses.replace(
        variant, weights={"in1k": {"url": url, "sha256": sha256}}))


def test_create_model_downloads_pretrained_weights(server, tmp_path, monkeypatch,
                                                   timm_checkpoint):
    x, y, data = timm_checkpoint
    server.routes[f"/{NAME}.pth"] = {"body": data}
    point_weights_at(monkeypatch, server.url(f"/{NAME}.pth"), hashlib.sha256(data).hexdigest())
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path))
    model = visionzoo.create_model(NAME, weights="in1k", input_shape=(64, 64, 3))
    ours = np.asarray(model.predict(x.transpose(0, 2, 3, 1), verbose=0))
    assert ours.shape == y.shape
    assert np.max(np.abs(ours - y)) <= 1e-4 * np.max(np.abs(y))
    assert cache_files(tmp_path) == [f"{NAME}.in1k.pth"]
    assert server.hits[f"/{NAME}.pth"] == 1


def test_create_model_refuses_weights_with_a_wrong_hash(server, tmp_path, monkeypatch):
    server.routes[f"/{NAME}.pth"] = {"body": BODY}
    point_weights_at(monkeypatch, server.url(f"/{NAME}.pth"), WRONG_SHA)
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path))
    with pytest.raises(DownloadError, match=r"SHA-256"):
        visionzoo.create_model(NAME, weights="imagenet", input_shape=(64, 64, 3),
                               depths=[1, 1, 1, 1], dims=[16, 32, 48, 64])
    assert cache_files(tmp_path) == []


def test_unpinned_file_records_digest_on_first_use_and_checks_it_later(server, tmp_path):
    """GitHub-release style: no pinned hash, none stated by the server."""
    with pytest.warns(UserWarning, match="no published SHA-256"):
        path = download(server.url("/good.bin"), directory=str(tmp_path), progress=False)
    assert cache_files(tmp_path) == ["good.bin", "good.bin.sha256"]
    assert open(path + ".sha256").read().strip() == SHA
    # A later use with the intact file is a cache hit ...
    download(server.url("/good.bin"), directory=str(tmp_path), progress=False)
    assert server.hits["/good.bin"] == 1
    # ... and a file altered in the cache no longer matches the recorded digest: fetched again.
    with open(path, "r+b") as f:
        f.write(b"XX")
    with pytest.warns(UserWarning):
        download(server.url("/good.bin"), directory=str(tmp_path), progress=False)
    assert server.hits["/good.bin"] == 2
    assert open(path, "rb").read() == BODY


def test_server_stated_digest_is_recorded_for_later_cache_checks(server, tmp_path):
    path = download(server.url("/hf/good.bin"), directory=str(tmp_path), progress=False)
    assert open(path + ".sha256").read().strip() == SHA
