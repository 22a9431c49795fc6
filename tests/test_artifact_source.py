"""Artifacts by URI (runtime/artifact_source.py): fetched over loopback HTTP or file://, verified, cached."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from eaglex.errors import EaglexError
from eaglex.runtime.artifact_source import artifact_name, resolve_artifact

FILES = {"target.onnx": b"graph" * 100, "target.onnx.data": bytes(range(256)) * 40, "engines/t.plan": b"p"}


def write_artifact(root: Path, files: dict[str, bytes] = FILES) -> Path:
    """A folder shaped like an artifact: files plus a manifest listing their sizes and checksums."""
    listed = {}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        listed[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {"format": "eaglex-artifact", "version": 1, "files": listed}
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "tune.json").write_text('{"best": {}}')
    return root


class Server:
    """http.server over a folder on 127.0.0.1, recording the paths it was asked for."""

    def __init__(self, folder: Path):
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                server.requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=folder))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/artifact"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[Server, Path]]:
    (tmp_path / "www" / "artifact").mkdir(parents=True)
    source = write_artifact(tmp_path / "www" / "artifact")
    server = Server(tmp_path / "www")
    yield server, source
    server.httpd.shutdown()
    server.httpd.server_close()


def entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.is_dir())


def test_http_fetch_verifies_caches_and_reuses(served, tmp_path) -> None:
    server, source = served
    cache = tmp_path / "cache"
    local = resolve_artifact(server.url + "/", cache)
    for name, data in FILES.items():
        assert (local / name).read_bytes() == data
    assert (local / "manifest.json").read_bytes() == (source / "manifest.json").read_bytes()
    assert (local / "tune.json").is_file()
    assert entries(cache) == [local.name]  # no partial folder left behind
    server.requests.clear()
    assert resolve_artifact(server.url, cache) == local
    assert server.requests == ["/artifact/manifest.json"]  # the cached copy is verified, not re-fetched


def test_tampered_remote_file_is_refused_and_nothing_cached(served, tmp_path) -> None:
    server, source = served
    (source / "target.onnx").write_bytes(b"GRAPH" * 100)  # same size, other bytes
    cache = tmp_path / "cache"
    with pytest.raises(EaglexError, match=r"damaged: .*target\.onnx fails its sha256"):
        resolve_artifact(server.url, cache)
    assert entries(cache) == []


def test_oversized_remote_file_stops_the_download(served, tmp_path) -> None:
    server, source = served
    (source / "target.onnx.data").write_bytes(bytes(50_000))
    with pytest.raises(EaglexError, match="larger than the 10240 bytes"):
        resolve_artifact(server.url, tmp_path / "cache")
    assert entries(tmp_path / "cache") == []


def test_damaged_cached_copy_is_fetched_again(served, tmp_path) -> None:
    server, _ = served
    cache = tmp_path / "cache"
    local = resolve_artifact(server.url, cache)
    (local / "target.onnx").write_bytes(b"x")
    assert resolve_artifact(server.url, cache) == local
    assert (local / "target.onnx").read_bytes() == FILES["target.onnx"]


def test_file_uri_is_fetched_like_http(tmp_path) -> None:
    (tmp_path / "shared").mkdir()
    source = write_artifact(tmp_path / "shared")
    local = resolve_artifact(source.as_uri(), tmp_path / "cache")
    assert local.parent == tmp_path / "cache"
    assert (local / "target.onnx.data").read_bytes() == FILES["target.onnx.data"]


def test_plain_path_is_used_in_place(tmp_path) -> None:
    assert resolve_artifact(str(tmp_path), tmp_path / "cache") == tmp_path
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://bucket/artifact", "scheme 's3' is not supported"),
        ("http://127.0.0.1:9/artifact", "cannot reach"),
    ],
)
def test_bad_uris_are_one_line_errors(uri, message, tmp_path) -> None:
    with pytest.raises(EaglexError, match=message):
        resolve_artifact(uri, tmp_path / "cache")


def test_missing_remote_artifact_is_404(served, tmp_path) -> None:
    server, _ = served
    with pytest.raises(EaglexError, match="HTTP 404"):
        resolve_artifact(server.url + "-nope", tmp_path / "cache")


def test_manifest_cannot_name_files_outside_the_artifact(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    write_artifact(tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    manifest["files"]["../../escape"] = {"bytes": 1, "sha256": "0"}
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EaglexError, match="outside the artifact"):
        resolve_artifact((tmp_path / "a").as_uri(), tmp_path / "cache")
    assert not (tmp_path / "escape").exists()


def test_artifact_name_of_a_path_or_uri(tmp_path) -> None:
    assert artifact_name("https://host/models/smollm2/") == "smollm2"
    assert artifact_name("file:///shared/a%20b") == "a b"
    assert artifact_name(tmp_path / "x" / "..") == tmp_path.name


def test_concurrent_fetches_on_one_machine_download_once(served, tmp_path) -> None:
    server, _ = served
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(3) as pool:
        paths = list(pool.map(lambda _: resolve_artifact(server.url, cache), range(3)))
    assert len(set(paths)) == 1
    assert server.requests.count("/artifact/target.onnx.data") == 1  # the others waited, then reused it
