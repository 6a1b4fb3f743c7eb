"""The output folder's lock: one alray run writes an output folder at a time.

The lock is ``<output>/_lock.json``::

    {"host": "build-7", "pid": 4242, "token": "9f1c...", "alray_version": "0.1.0",
     "started": "2026-11-23T10:01:02.345+00:00", "heartbeat": "2026-11-23T10:05:17.012+00:00"}

``token`` is random per lock: it tells this run from an earlier process that had the same host and
pid (a restarted container often gets both back).

Acquiring it is a conditional create, exact where the store has one:

- local disk: a temporary file is written beside it and ``os.link``-ed to the name, which fails
  if the name exists (also on NFS);
- S3: a PUT with ``If-None-Match: *`` (s3fs's ``pipe_file(mode="create")``), which AWS honours
  since 2024. Some S3-compatible stores ignore the header, so the first acquire on a folder probes
  it (one object created twice, then deleted); where the second create is not refused the lock
  falls back to the next case;
- anywhere else (``memory://``, or a store without conditional writes): write if absent. Two runs
  starting at the same moment may then both get it, so the lock says it is ``advisory``.

A lock that exists is judged by its holder: on this host, a holder whose process is gone is stale
at once (a rerun right after a crash works); otherwise a holder is stale when its ``heartbeat``
(the file's modification time where the file cannot be parsed) is older than the lease, which
also covers a reused pid and a hung holder. A live holder rewrites its heartbeat every
``heartbeat_seconds``. Clocks of different hosts are assumed to agree within the lease.

Taking a stale lock over: a marker ``_lock.json.takeover-<digest of the stale file>`` is created
the same conditional way, so of the runs that judged the same stale file only one goes on; it
checks that the lock is still that file, removes it, creates its own, and removes the marker. A
marker left by a run killed mid take-over is reclaimed once it is older than the lease.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from alray.errors import ConfigError
from alray.output.folder import OutputFolder
from alray.sources.files import (Storage, access_refusals, atomic_write, is_local, join_uri,
                                 local_path, url_to_fs)

__all__ = ["OutputLock", "LOCK_NAME"]

LOCK_NAME = OutputFolder.LOCK
_WHERE = "output.uri"
_TAKEOVER = LOCK_NAME + ".takeover-{}"
_ATTEMPTS = 3  # rounds of create / judge / take over before giving up on a contended folder
_HEARTBEAT_THREAD = "alray-lock-heartbeat"
# Tokens of the locks this process holds (or is acquiring): a lock naming this host and this pid
# but another token was left by an earlier process that had our pid.
_HELD_TOKENS: set[str] = set()

_log = logging.getLogger(__name__)


# --- where the lock lives --------------------------------------------------------------------


class _LocalFolder:
    """The output folder on local disk; creates with ``os.link``, which is atomic."""

    advisory = False

    def __init__(self, path: str):
        self.path = path
        os.makedirs(path, exist_ok=True)

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def create(self, name: str, data: bytes) -> bool:
        """Write ``name`` unless it exists; True when this call created it."""
        tmp = self._file(f".tmp-{uuid.uuid4().hex}-{name}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, self._file(name))
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def read(self, name: str) -> bytes | None:
        try:
            with open(self._file(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def modified(self, name: str) -> datetime:
        return datetime.fromtimestamp(os.stat(self._file(name)).st_mtime, timezone.utc)

    def overwrite(self, name: str, data: bytes) -> None:
        atomic_write(self._file(name), data)

    def remove(self, name: str) -> None:
        try:
            os.unlink(self._file(name))
        except FileNotFoundError:
            pass


class _FsspecFolder:
    """The output folder on any fsspec filesystem; creates by checking, then writing."""

    advisory = True

    def __init__(self, fs, path: str):
        self.fs = fs
        self.path = path.rstrip("/")

    def _file(self, name: str) -> str:
        return join_uri(self.path, name)

    def create(self, name: str, data: bytes) -> bool:
        path = self._file(name)
        self.fs.invalidate_cache(path)
        if self.fs.exists(path):
            return False
        self.fs.pipe_file(path, data)
        return True

    def read(self, name: str) -> bytes | None:
        try:
            return self.fs.cat_file(self._file(name))
        except FileNotFoundError:
            return None

    def modified(self, name: str) -> datetime:
        path = self._file(name)
        self.fs.invalidate_cache(path)
        stamp = self.fs.modified(path)
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)

    def overwrite(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(self._file(name), data)

    def remove(self, name: str) -> None:
        try:
            self.fs.rm_file(self._file(name))
        except FileNotFoundError:
            pass


class _S3Folder(_FsspecFolder):
    """The output folder on S3; creates with ``If-None-Match: *``."""

    advisory = False

    def create(self, name: str, data: bytes) -> bool:
        try:
            self.fs.pipe_file(self._file(name), data, mode="create")
            return True
        except FileExistsError:  # 412 PreconditionFailed, mapped by s3fs
            return False
        except OSError as exc:
            if _s3_code(exc) == "ConditionalRequestConflict":  # 409: a create of it in flight
                return False
            raise


def _s3_code(exc: BaseException) -> str | None:
    """The S3 error code behind an exception s3fs translated (it keeps the botocore error as
    ``__cause__``)."""
    response = getattr(exc.__cause__, "response", None) or {}
    return response.get("Error", {}).get("Code")


def _honours_conditional_create(fs, path: str) -> bool:
    """Whether the S3 store refuses a second ``If-None-Match: *`` PUT of one key (AWS and moto
    do; some S3-compatible stores ignore the header, others reject it as not implemented)."""
    probe = join_uri(path.rstrip("/"), f"_lock.probe-{uuid.uuid4().hex}")
    try:
        fs.pipe_file(probe, b"", mode="create")
        fs.pipe_file(probe, b"", mode="create")
        return False
    except FileExistsError:
        return True
    except OSError as exc:
        if getattr(exc, "errno", None) in (errno.ENOSYS, errno.EINVAL):
            return False
        raise
    finally:
        fs.rm_file(probe)


def _open_folder(output_uri: str, storage: Storage | None):
    if is_local(output_uri):
        return _LocalFolder(local_path(output_uri))
    fs, path = url_to_fs(output_uri, storage)
    if hasattr(fs, "call_s3") and _honours_conditional_create(fs, path):
        return _S3Folder(fs, path)
    return _FsspecFolder(fs, path)


# --- what a lock says ------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def _new_record() -> dict:
    from alray import __version__

    now = _iso(_now())
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
            "started": now, "heartbeat": now, "alray_version": __version__}


def _dumps(record: dict) -> bytes:
    return (json.dumps(record, indent=2) + "\n").encode()


@dataclass(frozen=True)
class _Holder:
    """Who a lock file names, as far as it can be read."""

    digest: str                 # sha256 of the file's bytes: which version of the file this is
    heartbeat: datetime         # the file's modification time where it cannot be parsed
    host: str | None = None     # None: the file is not a lock alray can read
    pid: int | None = None
    token: str | None = None
    started: str | None = None

    def describe(self) -> str:
        beat = f"last heartbeat {max(0, int((_now() - self.heartbeat).total_seconds()))} s ago"
        if self.host is None:
            return f"its {LOCK_NAME} cannot be read, last written {_iso(self.heartbeat)}"
        return f"pid {self.pid} on host {self.host}, started {_short(self.started)}, {beat}"


def _short(moment: str | None) -> str:
    """An ISO time to the second, for messages."""
    try:
        return datetime.fromisoformat(moment).isoformat(timespec="seconds")
    except (TypeError, ValueError):
        return str(moment)


def _parse(data: bytes) -> dict | None:
    """The lock's fields, or None where the file is not a lock alray wrote."""
    try:
        record = json.loads(data)
        beat = datetime.fromisoformat(record["heartbeat"])
    except (ValueError, TypeError, KeyError):
        return None
    if not (isinstance(record.get("host"), str) and type(record.get("pid")) is int):
        return None
    record["heartbeat"] = beat if beat.tzinfo else beat.replace(tzinfo=timezone.utc)
    return record


def _read_holder(folder) -> _Holder | None:
    """The lock's holder, or None where there is no lock (any more)."""
    data = folder.read(LOCK_NAME)
    if data is None:
        return None
    digest = hashlib.sha256(data).hexdigest()
    record = _parse(data)
    if record is None:
        try:
            return _Holder(digest, folder.modified(LOCK_NAME))
        except FileNotFoundError:
            return None
    return _Holder(digest, record["heartbeat"], record["host"], record["pid"],
                   record.get("token"), record.get("started"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _is_stale(holder: _Holder, lease_seconds: float) -> bool:
    """Whether the holder has stopped holding: gone from this host, or silent for a lease."""
    if holder.host == socket.gethostname():
        if holder.pid == os.getpid() and holder.token not in _HELD_TOKENS:
            return True  # an earlier process with our pid: not us
        if holder.pid is not None and holder.pid > 0 and not _pid_alive(holder.pid):
            return True
    return (_now() - holder.heartbeat).total_seconds() > lease_seconds


def _is_ours(holder: _Holder | None, record: dict) -> bool:
    return holder is not None and (holder.host, holder.pid, holder.token) == (
        record["host"], record["pid"], record["token"])


# --- acquiring -------------------------------------------------------------------------------


def _claim(folder, record: dict, lease_seconds: float) -> _Holder | None:
    """Create the lock with ``record``, taking a stale one over; returns the stale holder it
    replaced (None for a free folder). Raises ``_Refused`` with the live holder."""
    data = _dumps(record)
    holder = None
    for _ in range(_ATTEMPTS):
        if folder.create(LOCK_NAME, data):
            return None
        holder = _read_holder(folder)
        if holder is None:
            continue  # released since: try again
        if not _is_stale(holder, lease_seconds):
            raise _Refused(holder)
        if _take_over(folder, holder, data, lease_seconds):
            return holder
    raise _Refused(holder, contended=True)


class _Refused(Exception):
    def __init__(self, holder: _Holder | None, contended: bool = False):
        self.holder = holder
        self.contended = contended


def _take_over(folder, stale: _Holder, data: bytes, lease_seconds: float) -> bool:
    """Replace the stale lock with ``data``; False where another run is taking it over too."""
    marker = _TAKEOVER.format(stale.digest[:16])
    if not folder.create(marker, data) and not _reclaim_marker(folder, marker, data,
                                                                lease_seconds):
        return False
    try:
        current = _read_holder(folder)
        if current is not None and current.digest != stale.digest:
            return False  # taken over, or rewritten, since it was judged
        folder.remove(LOCK_NAME)
        return folder.create(LOCK_NAME, data)
    finally:
        folder.remove(marker)


def _reclaim_marker(folder, marker: str, data: bytes, lease_seconds: float) -> bool:
    """Take a take-over marker left by a run killed mid take-over (older than the lease)."""
    try:
        age = (_now() - folder.modified(marker)).total_seconds()
    except FileNotFoundError:
        age = None  # its run finished since
    if age is not None and age <= lease_seconds:
        return False
    folder.remove(marker)
    return folder.create(marker, data)


def _refusal(output_uri: str, refused: _Refused) -> ConfigError:
    what = "wait for it to finish, stop it, or give another --out"
    if refused.holder is None:
        return ConfigError(_WHERE, f"{output_uri} is claimed and released by other alray runs "
                                   f"again and again; {what}")
    holder = refused.holder.describe()
    if refused.contended:
        return ConfigError(_WHERE, f"{output_uri} is being taken over by another alray run at "
                                   f"the same time (the stale lock: {holder}); {what}")
    if refused.holder.host is None:
        what = (f"wait for it to finish, stop it, give another --out, or delete "
                f"{join_uri(output_uri, LOCK_NAME)} if no alray run uses the folder")
    return ConfigError(_WHERE, f"{output_uri} is in use by another alray run ({holder}); {what}")


class OutputLock:
    """The one alray run that may write an output folder.

    Get one with :meth:`acquire`; release it with :meth:`release` or by leaving a ``with`` block.

    Attributes:
        output_uri: the folder, as given.
        advisory: True where the store has no conditional create (``memory://``, some
            S3-compatible stores): the lock is then best effort, and two runs that start at the
            same moment may both hold it.
        taken_over: where a stale lock was replaced, who held it (``pid 4242 on host build-7,
            started ...``); None for a free folder.
    """

    def __init__(self, output_uri: str, folder, record: dict, heartbeat_seconds: float,
                 taken_over: str | None):
        self.output_uri = output_uri
        self.advisory = folder.advisory
        self.taken_over = taken_over
        self._folder = folder
        self._record = record
        self._heartbeat_seconds = heartbeat_seconds
        self._stop = threading.Event()
        self._writing = threading.Lock()  # a heartbeat write, or the release
        self._released = False
        self._thread = threading.Thread(target=self._beat, name=_HEARTBEAT_THREAD, daemon=True)

    @classmethod
    def acquire(cls, output_uri: str, storage: Storage | None = None, *,
                lease_seconds: float = 60.0, heartbeat_seconds: float = 15.0) -> OutputLock:
        """Take the lock of ``output_uri`` (created where missing on local disk).

        Args:
            output_uri: the output folder, a local path or an fsspec URL.
            storage: fsspec options by protocol.
            lease_seconds: a holder on another host whose heartbeat is older than this is
                taken to be gone.
            heartbeat_seconds: how often the holder rewrites its heartbeat; shorter than the lease.

        Raises:
            ConfigError: (``output.uri``) another run holds the folder, or the store refuses
                access to it.
        """
        if not 0 < heartbeat_seconds < lease_seconds:
            raise ValueError(f"heartbeat_seconds ({heartbeat_seconds}) must be above 0 and "
                             f"below lease_seconds ({lease_seconds}); pass a shorter heartbeat")
        record = _new_record()
        _HELD_TOKENS.add(record["token"])  # before the create: a racing thread reads it as ours
        try:
            with access_refusals(_WHERE, output_uri):
                folder = _open_folder(output_uri, storage)
                stale = _claim(folder, record, lease_seconds)
        except _Refused as refused:
            _HELD_TOKENS.discard(record["token"])
            raise _refusal(output_uri, refused) from None
        except BaseException:
            _HELD_TOKENS.discard(record["token"])
            raise
        lock = cls(output_uri, folder, record, heartbeat_seconds,
                   stale.describe() if stale is not None else None)
        lock._thread.start()
        return lock

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_seconds):
            self._write_heartbeat()

    def _write_heartbeat(self) -> None:
        with self._writing:
            if self._stop.is_set():
                return
            self._record["heartbeat"] = _iso(_now())
            try:
                self._folder.overwrite(LOCK_NAME, _dumps(self._record))
            except Exception as exc:  # the next beat tries again; the lease covers a few misses
                _log.warning("%s: could not rewrite the heartbeat of %s (%s)", _WHERE,
                             join_uri(self.output_uri, LOCK_NAME), exc)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still this run's. Idempotent; a lock
        that is gone, or that the store will not remove, is logged, never raised: the next run
        takes a leftover lock over once it is stale."""
        self._stop.set()
        with self._writing:  # waits for a heartbeat write in flight, so none follows the removal
            if self._released:
                return
            self._released = True
            try:
                if _is_ours(_read_holder(self._folder), self._record):
                    self._folder.remove(LOCK_NAME)
            except Exception as exc:
                _log.warning("%s: could not remove %s (%s); the next run takes it over once it "
                             "is stale", _WHERE, join_uri(self.output_uri, LOCK_NAME), exc)
            finally:
                _HELD_TOKENS.discard(self._record["token"])
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self._heartbeat_seconds + 1)

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return (f"OutputLock({self.output_uri!r}, pid={self._record['pid']}, "
                f"advisory={self.advisory}, {state})")
