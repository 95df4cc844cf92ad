"""Where outputs and manifests go: a local folder or a GCS bucket, behind one small interface.

Every JSON document that several writers may update (run records, STAC items, collections) is written with a
*generation precondition*: ``write_json(key, data, if_generation_match=g)`` succeeds only if the object's current
generation is ``g`` (0 = the object must not exist yet) and raises :class:`PreconditionFailed` otherwise. That is
what makes concurrent read-modify-write cycles safe (see ``catalogue.update_json``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from .errors import LeafError, TransientError

if TYPE_CHECKING:  # pragma: no cover
    from .request import ProductionRequest

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once at import: os.umask can only be read by setting it, which races with other threads
FILE_MODE = 0o666 & ~_UMASK
"""Mode of the files a local sink writes: what ``open()`` would give them (mkstemp's own 0600 would keep the maps
from the group and the web server that share the folder)."""

T = TypeVar("T")


class PreconditionFailed(LeafError):
    """The object's generation is not the one the write was conditioned on: re-read and try again."""


class SinkError(LeafError):
    """A sink operation failed for a reason retrying will not fix (permissions, missing bucket)."""


@runtime_checkable
class Sink(Protocol):
    def uri(self, key: str) -> str: ...
    def put_file(self, key: str, path: Path, *, move: bool = False) -> None:
        """Store the file at ``path`` as ``key``. ``move``: it is the caller's scratch copy, which the sink may take
        instead of copying (a rename within one filesystem); the caller must not use it afterwards."""
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...
    def get_bytes(self, key: str) -> bytes | None: ...
    def download(self, key: str, path: Path) -> bool: ...
    def exists(self, key: str) -> bool: ...
    def read_json(self, key: str) -> tuple[dict, int] | None: ...
    def write_json(self, key: str, data: dict, *, if_generation_match: int | None = None) -> int: ...
    def list(self, prefix: str) -> list[str]: ...
    def stat(self, key: str) -> tuple[int, str] | None: ...


def _json_bytes(data: dict) -> bytes:
    return json.dumps(data, indent=1, sort_keys=False, ensure_ascii=False).encode("utf-8")


def md5_base64(data: bytes) -> str:
    """Checksum in GCS's ``md5Hash`` form (base64 of the MD5 digest), so local and GCS stats compare."""
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


# ----------------------------------------------------------------------------------------------------- local


class LocalSink:
    """A folder. Writes are atomic (temp file + ``os.replace``); each object's generation lives in a side file
    under the hidden ``.leaf/`` folder, so the output folders hold only the outputs.

    Conditional writes are serialised by an ``fcntl`` lock per object, so they are safe across threads and
    processes on one machine.
    """

    META_DIR = ".leaf"
    _GEN_SUFFIX = ".gen"
    _LOCK_SUFFIX = ".lock"

    def __init__(self, root: Path):
        self.root = Path(root)
        self._thread_lock = threading.Lock()

    def _path(self, key: str) -> Path:
        key = key.strip("/")
        if not key or ".." in key.split("/"):
            raise SinkError(f"invalid object key {key!r}: use a relative path without '..'")
        return self.root / key

    def uri(self, key: str) -> str:
        return self._path(key).resolve().as_uri()

    def _meta(self, path: Path, suffix: str) -> Path:
        meta = self.root / self.META_DIR / path.relative_to(self.root)
        return meta.with_name(meta.name + suffix)

    def _atomic_write(self, path: Path, data: bytes | Path, move: bool = False) -> None:
        """Write bytes, or copy a file (streamed: memory does not grow with file size), atomically; with ``move``, a
        file on the same filesystem is renamed into place instead (a 4000² job's ten maps took as long to copy as
        to assemble)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if move and isinstance(data, Path) and os.stat(data).st_dev == os.stat(path.parent).st_dev:
            os.chmod(data, FILE_MODE)
            os.replace(data, path)
            return
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, FILE_MODE)
            if isinstance(data, Path):
                os.close(fd)
                shutil.copyfile(data, tmp)
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _generation(self, path: Path) -> int:
        gen_path = self._meta(path, self._GEN_SUFFIX)
        if not path.exists():
            return 0
        try:
            return int(gen_path.read_text())
        except (FileNotFoundError, ValueError):
            return 1  # written by something other than this sink

    def _bump(self, path: Path) -> int:
        gen = self._generation(path) + 1
        self._atomic_write(self._meta(path, self._GEN_SUFFIX), str(gen).encode())
        return gen

    @contextmanager
    def _locked(self, path: Path):
        import fcntl

        lock_path = self._meta(path, self._LOCK_SUFFIX)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with self._thread_lock, open(lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def put_file(self, key: str, path: Path, *, move: bool = False) -> None:
        self._put(key, Path(path), move)

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._put(key, data)

    def _put(self, key: str, data: bytes | Path, move: bool = False) -> None:
        target = self._path(key)
        with self._locked(target):
            self._atomic_write(target, data, move)
            self._bump(target)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def download(self, key: str, path: Path) -> bool:
        try:
            shutil.copyfile(self._path(key), path)
        except FileNotFoundError:
            return False
        return True

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def local_path(self, key: str) -> Path:
        """Where ``key`` lives on disk (readers open it in place instead of copying it)."""
        return self._path(key)

    def read_json(self, key: str) -> tuple[dict, int] | None:
        path = self._path(key)
        with self._locked(path):
            if not path.exists():
                return None
            return json.loads(path.read_text(encoding="utf-8")), self._generation(path)

    def write_json(self, key: str, data: dict, *, if_generation_match: int | None = None) -> int:
        path = self._path(key)
        with self._locked(path):
            current = self._generation(path)
            if if_generation_match is not None and current != if_generation_match:
                raise PreconditionFailed(f"{key}: generation is {current}, not {if_generation_match}")
            self._atomic_write(path, _json_bytes(data))
            return self._bump(path)

    def list(self, prefix: str) -> list[str]:
        prefix = prefix.strip("/")
        base = self.root / prefix if prefix else self.root
        start = base if base.is_dir() else base.parent
        if not start.exists():
            return []
        out = []
        meta = self.root / self.META_DIR
        for p in start.rglob("*"):
            if p.is_file() and not p.name.endswith(".tmp") and not p.is_relative_to(meta):
                key = p.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    out.append(key)
        return sorted(out)

    def stat(self, key: str) -> tuple[int, str] | None:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "md5")
        except FileNotFoundError:
            return None
        return path.stat().st_size, base64.b64encode(digest.digest()).decode("ascii")

    def generation(self, key: str) -> int | None:
        """The object's current generation (None when it does not exist)."""
        path = self._path(key)
        return self._generation(path) if path.is_file() else None


# ------------------------------------------------------------------------------------------------------- GCS

_RETRY_ATTEMPTS = 5
_READ_CHUNK = 256 * 1024


def _retrying(what: str, call: Callable[[], T]) -> T:
    """Run a GCS call; retry 429/5xx with jittered backoff, then raise TransientError so the platform retries."""
    import requests
    from google.api_core import exceptions as gex

    # requests' ConnectionError/Timeout are not the builtin ConnectionError: a reset or a lost answer on a call the
    # client does not retry itself would otherwise escape as a permanent failure.
    transient = (gex.TooManyRequests, gex.InternalServerError, gex.BadGateway, gex.ServiceUnavailable,
                 gex.GatewayTimeout, ConnectionError, requests.exceptions.ConnectionError,
                 requests.exceptions.Timeout, requests.exceptions.ChunkedEncodingError)
    delay = 0.2
    for attempt in range(_RETRY_ATTEMPTS):
        try:
            return call()
        except gex.PreconditionFailed as e:
            raise PreconditionFailed(f"{what}: {e.message}") from e
        except gex.Forbidden as e:
            raise SinkError(f"{what}: permission denied ({e.message}); grant the service account access") from e
        except transient as e:
            if attempt == _RETRY_ATTEMPTS - 1:
                raise TransientError(f"{what}: {e} (gave up after {_RETRY_ATTEMPTS} attempts)") from e
            time.sleep(delay * (1 + random.random()))
            delay *= 2
    raise AssertionError("unreachable")


class GcsSink:
    """A GCS bucket (or the emulator named by ``STORAGE_EMULATOR_HOST``); the SDK is imported lazily."""

    def __init__(self, bucket: str, client: Any = None):
        self.bucket_name = bucket
        self._client = client
        self._bucket: Any = None

    @property
    def bucket(self) -> Any:
        if self._bucket is None:
            if self._client is None:
                from google.cloud import storage

                self._client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT") or None)
            self._bucket = self._client.bucket(self.bucket_name)
        return self._bucket

    def uri(self, key: str) -> str:
        return f"gs://{self.bucket_name}/{key.strip('/')}"

    def _writing(self, what: str, call: Callable[[], T]) -> T:
        from google.api_core import exceptions as gex

        try:
            return _retrying(what, call)
        except gex.NotFound as e:
            raise SinkError(f"{what}: bucket {self.bucket_name!r} not found; create it or fix GCS_bucket") from e

    def put_file(self, key: str, path: Path, *, move: bool = False) -> None:  # an upload either way
        blob = self.bucket.blob(key.strip("/"))
        self._writing(f"upload {self.uri(key)}", lambda: blob.upload_from_filename(str(path)))

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        blob = self.bucket.blob(key.strip("/"))
        self._writing(f"upload {self.uri(key)}", lambda: blob.upload_from_string(data, content_type=content_type))

    def get_bytes(self, key: str) -> bytes | None:
        from google.api_core import exceptions as gex

        blob = self.bucket.blob(key.strip("/"))
        try:
            return _retrying(f"download {self.uri(key)}", blob.download_as_bytes)
        except gex.NotFound:
            return None

    def download(self, key: str, path: Path) -> bool:
        from google.api_core import exceptions as gex

        blob = self.bucket.blob(key.strip("/"))
        try:
            _retrying(f"download {self.uri(key)}", lambda: blob.download_to_filename(str(path)))
            return True
        except gex.NotFound:
            Path(path).unlink(missing_ok=True)
            return False

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def open_reader(self, key: str) -> Any:
        """A seekable reader that fetches byte ranges on demand (None when the object does not exist).

        Lets GDAL read a COG's header and overviews without downloading the whole file.
        """
        blob = _retrying(f"stat {self.uri(key)}", lambda: self.bucket.get_blob(key.strip("/")))
        return None if blob is None else blob.open("rb", chunk_size=_READ_CHUNK)

    def read_json(self, key: str) -> tuple[dict, int] | None:
        from google.api_core import exceptions as gex

        blob = self.bucket.blob(key.strip("/"))
        try:
            # Read content and generation in one response: pin the download to the generation we saw.
            _retrying(f"stat {self.uri(key)}", blob.reload)
            gen = int(blob.generation)
            data = _retrying(f"read {self.uri(key)}", lambda: blob.download_as_bytes(if_generation_match=gen))
        except gex.NotFound:
            return None
        except PreconditionFailed:
            return self.read_json(key)  # replaced between the two calls: read the newer one
        return json.loads(data.decode("utf-8")), gen

    def write_json(self, key: str, data: dict, *, if_generation_match: int | None = None) -> int:
        blob = self.bucket.blob(key.strip("/"))
        body = _json_bytes(data)
        self._writing(f"write {self.uri(key)}", lambda: blob.upload_from_string(
            body, content_type="application/json", if_generation_match=if_generation_match))
        return int(blob.generation)

    def list(self, prefix: str) -> list[str]:
        p = prefix.strip("/")
        return sorted(self._writing(f"list {self.uri(p)}",  # _writing: a missing bucket is a SinkError
                                    lambda: [b.name for b in self.bucket.client.list_blobs(self.bucket, prefix=p)]))

    def stat(self, key: str) -> tuple[int, str] | None:
        blob = _retrying(f"stat {self.uri(key)}", lambda: self.bucket.get_blob(key.strip("/")))
        return None if blob is None else (int(blob.size), str(blob.md5_hash or blob.crc32c or ""))

    def generation(self, key: str) -> int | None:
        """The object's current generation, from its metadata (None when it does not exist)."""
        blob = _retrying(f"stat {self.uri(key)}", lambda: self.bucket.get_blob(key.strip("/")))
        return None if blob is None else int(blob.generation)


def parse_gs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/some/prefix`` → ``("bucket", "some/prefix")``."""
    if not uri.startswith("gs://") or len(uri) <= 5:
        raise SinkError(f"{uri!r} is not a gs://bucket[/prefix] URI")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")


def open_sink(req: ProductionRequest, out_dir: Path | None = None) -> Sink:
    """The request's destination: a local folder when ``out_location == "local"``, its bucket otherwise."""
    if req.out_location == "local":
        return LocalSink(Path(out_dir) if out_dir is not None else Path.cwd())
    if not req.GCS_bucket:
        raise SinkError("the request writes to storage but names no GCS_bucket; add \"GCS_bucket\": \"...\"")
    return GcsSink(req.GCS_bucket)


__all__ = ["GcsSink", "LocalSink", "PreconditionFailed", "Sink", "SinkError", "md5_base64", "open_sink",
           "parse_gs_uri"]
