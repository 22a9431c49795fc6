"""Where an artifact comes from: a local folder, or a URI each machine fetches into its own cache.

A server replica on another node cannot assume it sees the exporting machine's disk. It gets either a
path on shared storage (used in place) or a URI, `file://` or `http(s)://`, naming the artifact's folder.
The URI's `manifest.json` lists every file with its size and sha256 (docs/ARTIFACT.md), so a fetch knows
exactly what to download and can refuse anything damaged or tampered with before the engine sees it.

The cache is content-addressed by the manifest's own sha256: a re-exported artifact gets a new entry, an
unchanged one is fetched once per machine. An entry appears only complete and verified (downloaded into a
temporary folder, checked against the file table, then renamed), so a replica that dies mid-download leaves
nothing another would trust; replicas on one machine take a file lock so they download it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from eaglex.errors import EaglexError
from eaglex.runtime.manifest import REEXPORT, sha256

SCHEMES = ("file", "http", "https")
# Not in the manifest's file list (eaglex tune writes it after export), but worth carrying: the tuning
# record. Fetched when present, never required.
OPTIONAL_FILES = ("tune.json",)
TIMEOUT_S = 60.0
CHUNK = 1 << 20
REPORT_BYTES = 100 << 20


def default_cache() -> Path:
    return Path(os.environ.get("EAGLEX_CACHE", Path.home() / ".cache" / "eaglex")) / "artifacts"


def is_uri(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme in SCHEMES


def artifact_name(source: str | Path) -> str:
    """The artifact folder's name (the model id a server reports by default), for a path or a URI."""
    text = str(source)
    if is_uri(text):
        return PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(text).path).rstrip("/")).name
    return Path(text).resolve().name


def resolve_artifact(
    source: str | Path,
    cache: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Path:
    """A local artifact folder for `source`: a path is returned as it is (the engine verifies it when it
    loads); a file:// or http(s):// URI is fetched into `cache` (default ~/.cache/eaglex/artifacts, or
    $EAGLEX_CACHE/artifacts) unless a verified copy is already there."""
    text = str(source)
    scheme = urllib.parse.urlsplit(text).scheme
    if scheme not in SCHEMES:
        if "://" in text:
            raise EaglexError(
                f"artifact URI {text}: scheme {scheme!r} is not supported; use a path, file://, http:// "
                "or https:// (for S3, mount the bucket or serve it over https)"
            )
        return Path(text)
    base = text.rstrip("/")
    manifest_bytes, files = read_remote_manifest(base)
    root = cache or default_cache()
    root.mkdir(parents=True, exist_ok=True)
    entry = root / hashlib.sha256(manifest_bytes).hexdigest()[:32]
    with open(root / f"{entry.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second replica on this machine waits, then finds the entry
        if entry.is_dir():
            try:
                _verify(entry, manifest_bytes)
                progress(f"artifact {base}: verified cached copy {entry}")
                return entry
            except EaglexError as e:
                progress(f"artifact {base}: cached copy is damaged ({e}); fetching it again")
                shutil.rmtree(entry)
        _fetch_into(base, manifest_bytes, files, entry, progress)
    return entry


def read_remote_manifest(uri: str) -> tuple[bytes, dict[str, dict]]:
    """The manifest at a URI, as bytes and its checked list of files."""
    base = uri.rstrip("/")
    manifest_bytes = _read_all(base, "manifest.json")
    try:
        files = json.loads(manifest_bytes)["files"]
        for name, info in files.items():
            _check_name(name, base)
            if not isinstance(info["bytes"], int) or not isinstance(info["sha256"], str):
                raise ValueError(name)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
        raise EaglexError(f"{base}/manifest.json is not an eaglex artifact manifest") from None
    return manifest_bytes, files


def _verify(folder: Path, manifest_bytes: bytes) -> None:
    """Sizes and sha256 of every file the manifest's file table lists (the rest of the contract is checked
    when the engine loads the fetched copy)."""
    for name, info in json.loads(manifest_bytes)["files"].items():
        path = folder / name
        if not path.is_file():
            raise EaglexError(f"artifact file {path} is missing; {REEXPORT}")
        if path.stat().st_size != info["bytes"]:
            raise EaglexError(f"artifact file {path} has {path.stat().st_size} bytes, not {info['bytes']}")
        if sha256(path) != info["sha256"]:
            raise EaglexError(f"artifact file {path} fails its sha256 checksum: it is damaged; {REEXPORT}")


def _fetch_into(
    base: str, manifest_bytes: bytes, files: dict, entry: Path, progress: Callable[[str], None]
) -> None:
    partial = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        total = sum(info["bytes"] for info in files.values())
        progress(f"artifact {base}: fetching {len(files)} files, {total / 1e6:.1f} MB")
        for name, info in sorted(files.items()):
            _download(base, name, partial / name, info["bytes"], progress)
        for name in OPTIONAL_FILES:
            if name not in files:
                _download_optional(base, name, partial / name)
        try:
            _verify(partial, manifest_bytes)  # sizes and sha256 of everything the manifest lists
        except EaglexError as e:
            raise EaglexError(f"the artifact fetched from {base} is damaged: {e}") from None
        (partial / "manifest.json").write_bytes(manifest_bytes)
        partial.rename(entry)
        progress(f"artifact {base}: verified and cached in {entry}")
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _check_name(name: str, base: str) -> None:
    """A manifest from the network names files inside the artifact, never elsewhere on this machine."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name:
        raise EaglexError(f"{base}/manifest.json lists the file {name!r}, which is outside the artifact")


def _open(base: str, name: str) -> BinaryIO:
    url = f"{base}/{urllib.parse.quote(name)}"
    try:
        if base.startswith("file:"):
            return open(urllib.request.url2pathname(urllib.parse.urlsplit(url).path), "rb")
        return urllib.request.urlopen(url, timeout=TIMEOUT_S)
    except FileNotFoundError:
        raise EaglexError(f"{url} does not exist: is {base} an eaglex artifact folder?") from None
    except urllib.error.HTTPError as e:
        raise EaglexError(f"{url}: HTTP {e.code} {e.reason}; check the artifact URI") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise EaglexError(f"cannot reach {url} ({reason}): check the URI and the network") from None


def _read_all(base: str, name: str) -> bytes:
    with _open(base, name) as f:
        return f.read()


def _download(base: str, name: str, path: Path, size: int, progress: Callable[[str], None]) -> None:
    """Streams one file to disk, reporting every REPORT_BYTES; stops as soon as it runs past the
    manifest's size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    written, reported = 0, 0
    with _open(base, name) as src, open(path, "wb") as dst:
        while True:
            try:
                chunk = src.read(CHUNK)
            except OSError as e:  # a connection reset or timeout halfway through the file
                raise EaglexError(f"fetching {base}/{name} failed after {written} bytes ({e})") from None
            if not chunk:
                progress(f"  {name} ({written / 1e6:.1f} MB)")
                return
            written += len(chunk)
            if written - reported >= REPORT_BYTES:
                progress(f"  {name}: {written / 1e6:.0f} of {size / 1e6:.0f} MB")
                reported = written
            if written > size:
                raise EaglexError(
                    f"{base}/{name} is larger than the {size} bytes its manifest lists: the remote "
                    "artifact is damaged or was replaced mid-fetch; re-export or re-upload it"
                )
            dst.write(chunk)


def _download_optional(base: str, name: str, path: Path) -> None:
    try:
        data = _read_all(base, name)
    except EaglexError:
        return
    path.write_bytes(data)
