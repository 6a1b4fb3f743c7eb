"""The output folder's lock (alray.output.lock), on local disk, the moto S3 server and memory://.

No Ray here: every test uses real files, a real S3 server or fsspec's memory filesystem.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import fsspec
import pytest

from alray.errors import ConfigError
from alray.output.lock import LOCK_NAME, OutputLock

HOST = socket.gethostname()
_RACERS = 8


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _write_lock(folder, host: str, pid: int, heartbeat: datetime, started: datetime | None = None):
    """A lock written by hand, as another run would have left it."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {"host": host, "pid": pid, "token": "someone-else",
              "started": _iso(started or heartbeat), "heartbeat": _iso(heartbeat),
              "alray_version": "0.1.0"}
    (folder / LOCK_NAME).write_text(json.dumps(record))


def _holder(folder) -> dict:
    return json.loads((folder / LOCK_NAME).read_text())


def _dead_pid() -> int:
    """The pid of a process of this host that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    return child.pid


def _refusal_pattern(folder, pid: int, host: str) -> str:
    return (rf"^output\.uri: {re.escape(str(folder))} is in use by another alray run "
            rf"\(pid {pid} on host {re.escape(host)}, started \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d"
            rf"\+00:00, last heartbeat \d+ s ago\); wait for it to finish, stop it, or give "
            rf"another --out$")


# --- local disk ------------------------------------------------------------------------------


def test_second_acquire_refuses_then_release_frees_the_folder(tmp_path):
    out = tmp_path / "out"  # missing: acquire creates it
    lock = OutputLock.acquire(str(out))
    assert lock.advisory is False and lock.taken_over is None
    holder = _holder(out)
    assert (holder["host"], holder["pid"]) == (HOST, os.getpid())
    assert set(holder) >= {"host", "pid", "started", "heartbeat", "alray_version"}
    assert datetime.fromisoformat(holder["started"]).utcoffset() == timedelta(0)

    with pytest.raises(ConfigError, match=_refusal_pattern(out, os.getpid(), HOST)):
        OutputLock.acquire(str(out))
    assert _holder(out) == holder  # the refused run left it alone

    lock.release()
    assert not (out / LOCK_NAME).exists()
    assert sorted(os.listdir(out)) == []  # no temporary files left behind
    lock.release()  # idempotent

    with OutputLock.acquire(str(out)) as again:
        assert _holder(out)["token"] != holder["token"]
    assert not (out / LOCK_NAME).exists()
    assert "released" in repr(again)


def test_a_lock_from_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    dead = _dead_pid()
    _write_lock(tmp_path, HOST, dead, heartbeat=datetime.now(timezone.utc))
    with OutputLock.acquire(str(tmp_path)) as lock:
        assert lock.taken_over.startswith(f"pid {dead} on host {HOST}, started ")
        assert _holder(tmp_path)["pid"] == os.getpid()
    assert sorted(os.listdir(tmp_path)) == []  # lock and take-over marker gone


def test_a_live_process_on_this_host_holds_its_lock(tmp_path):
    """The pid is alive (this test's parent) and the heartbeat fresh: refused."""
    _write_lock(tmp_path, HOST, os.getppid(), heartbeat=datetime.now(timezone.utc))
    with pytest.raises(ConfigError, match=_refusal_pattern(tmp_path, os.getppid(), HOST)):
        OutputLock.acquire(str(tmp_path))


def test_another_host_holds_its_lock_for_the_lease(tmp_path):
    started = datetime(2026, 11, 23, 10, 1, 2, tzinfo=timezone.utc)
    written = time.monotonic()
    _write_lock(tmp_path, "build-7", 4242, heartbeat=datetime.now(timezone.utc) - timedelta(
        seconds=20), started=started)
    with pytest.raises(ConfigError) as refused:
        OutputLock.acquire(str(tmp_path), lease_seconds=60)
    elapsed = time.monotonic() - written
    expected = (f"output.uri: {tmp_path} is in use by another alray run (pid 4242 on host "
                f"build-7, started 2026-11-23T10:01:02+00:00, last heartbeat N s ago); wait for "
                f"it to finish, stop it, or give another --out")
    seconds = re.search(r"last heartbeat (\d+) s ago", str(refused.value)).group(1)
    assert str(refused.value) == expected.replace("N", seconds)
    assert 20 <= int(seconds) <= 20 + elapsed  # whole seconds, rounded down


def test_another_host_silent_for_longer_than_the_lease_is_taken_over(tmp_path):
    _write_lock(tmp_path, "build-7", 4242,
                heartbeat=datetime.now(timezone.utc) - timedelta(seconds=61))
    with OutputLock.acquire(str(tmp_path), lease_seconds=60) as lock:
        assert lock.taken_over.startswith("pid 4242 on host build-7")
        assert (_holder(tmp_path)["host"], _holder(tmp_path)["pid"]) == (HOST, os.getpid())


def test_an_unreadable_lock_ages_by_its_modification_time(tmp_path):
    (tmp_path / LOCK_NAME).write_text("{not json")
    with pytest.raises(ConfigError, match=r"cannot be read, last written .*delete .*_lock\.json "
                                          r"if no alray run uses the folder$"):
        OutputLock.acquire(str(tmp_path), lease_seconds=60)
    old = time.time() - 120
    os.utime(tmp_path / LOCK_NAME, (old, old))
    with OutputLock.acquire(str(tmp_path), lease_seconds=60) as lock:
        assert lock.taken_over.startswith("its _lock.json cannot be read")
        assert _holder(tmp_path)["pid"] == os.getpid()


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
    lock = OutputLock.acquire(str(tmp_path))
    _write_lock(tmp_path, "build-7", 4242, heartbeat=datetime.now(timezone.utc))
    lock.release()
    assert _holder(tmp_path)["host"] == "build-7"


def test_release_of_a_lock_removed_meanwhile_does_not_raise(tmp_path):
    lock = OutputLock.acquire(str(tmp_path / "out"))
    (tmp_path / "out" / LOCK_NAME).unlink()
    lock.release()
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def _heartbeat_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "alray-lock-heartbeat"]


def test_the_heartbeat_advances_until_release(tmp_path):
    before = _heartbeat_threads()
    lock = OutputLock.acquire(str(tmp_path), heartbeat_seconds=0.05, lease_seconds=5)
    first = _holder(tmp_path)
    deadline = time.monotonic() + 10
    while (now := _holder(tmp_path))["heartbeat"] == first["heartbeat"]:
        assert time.monotonic() < deadline, "the heartbeat did not change within 10 s"
        threading.Event().wait(0.01)
    assert now["heartbeat"] > first["heartbeat"]
    assert {k: v for k, v in now.items() if k != "heartbeat"} == {
        k: v for k, v in first.items() if k != "heartbeat"}
    assert len(_heartbeat_threads()) == len(before) + 1
    lock.release()
    assert _heartbeat_threads() == before  # stopped and joined by release
    assert not (tmp_path / LOCK_NAME).exists()


def test_heartbeat_must_be_shorter_than_the_lease(tmp_path):
    with pytest.raises(ValueError, match="heartbeat_seconds"):
        OutputLock.acquire(str(tmp_path), heartbeat_seconds=60, lease_seconds=60)
    assert not (tmp_path / LOCK_NAME).exists()


def _race(uri: str, start, done, results) -> None:
    """One racer: acquire at the barrier, report, and hold until every racer has tried."""
    start.wait(timeout=60)
    try:
        lock = OutputLock.acquire(uri)
    except ConfigError as refused:
        results.put(("refused", str(refused)))
        done.wait(timeout=60)
        return
    results.put(("won", lock.taken_over))
    done.wait(timeout=60)
    lock.release()


def _race_processes(uri: str) -> list[tuple[str, str | None]]:
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    start, done = context.Barrier(_RACERS), context.Barrier(_RACERS)
    results = context.Queue()
    racers = [context.Process(target=_race, args=(uri, start, done, results))
              for _ in range(_RACERS)]
    for racer in racers:
        racer.start()
    try:
        outcomes = [results.get(timeout=120) for _ in racers]
    finally:
        for racer in racers:
            racer.join(timeout=60)
    assert [racer.exitcode for racer in racers] == [0] * _RACERS
    return outcomes


def test_processes_racing_for_a_free_folder_have_one_winner(tmp_path):
    outcomes = _race_processes(str(tmp_path / "out"))
    assert [kind for kind, _ in outcomes].count("won") == 1
    assert all("is in use by another alray run" in text for kind, text in outcomes
               if kind == "refused")
    assert sorted(os.listdir(tmp_path / "out")) == []


def test_processes_racing_to_take_over_a_stale_lock_have_one_winner(tmp_path):
    dead = _dead_pid()
    _write_lock(tmp_path, HOST, dead, heartbeat=datetime.now(timezone.utc))
    outcomes = _race_processes(str(tmp_path))
    winners = [taken_over for kind, taken_over in outcomes if kind == "won"]
    assert len(winners) == 1
    # The winner took the stale lock over, or created its own in the moment between another
    # racer's removal of the stale lock and that racer's create (which then refused).
    assert winners[0] is None or winners[0].startswith(f"pid {dead} on host {HOST}")
    assert sorted(os.listdir(tmp_path)) == []


# --- S3 (moto's server) and memory:// ----------------------------------------------------------


@pytest.fixture
def bucket(s3, s3_server):
    """``(uri, storage, fs)`` of an output folder on the test S3 server."""
    s3.mkdir("alray-locks")
    return "s3://alray-locks/run-1", {"s3": {"endpoint_url": s3_server}}, s3


def test_s3_acquire_refuse_release(bucket):
    uri, storage, fs = bucket
    lock = OutputLock.acquire(uri, storage)
    # s3fs 2026.9's pipe_file(mode="create") sends If-None-Match: *, and moto 5.2's server
    # answers a second such PUT of a key with 412 PreconditionFailed (s3fs raises
    # FileExistsError): the lock's probe finds a real conditional create, as on AWS.
    assert lock.advisory is False
    holder = json.loads(fs.cat_file("alray-locks/run-1/_lock.json"))
    assert (holder["host"], holder["pid"]) == (HOST, os.getpid())
    with pytest.raises(ConfigError, match=_refusal_pattern(uri, os.getpid(), HOST)):
        OutputLock.acquire(uri, storage)
    lock.release()
    fs.invalidate_cache()
    assert fs.find("alray-locks") == []  # lock and probe objects gone
    with OutputLock.acquire(uri, storage) as again:
        assert again.advisory is False


def test_s3_takes_over_a_silent_host_and_keeps_its_heartbeat(bucket):
    uri, storage, fs = bucket
    stale = {"host": "build-7", "pid": 4242, "started": "2026-11-23T10:01:02+00:00",
             "heartbeat": _iso(datetime.now(timezone.utc) - timedelta(seconds=61)),
             "alray_version": "0.1.0"}
    fs.pipe_file("alray-locks/run-1/_lock.json", json.dumps(stale).encode())
    with OutputLock.acquire(uri, storage, lease_seconds=60, heartbeat_seconds=0.05) as lock:
        assert lock.taken_over.startswith("pid 4242 on host build-7")
        first = json.loads(fs.cat_file("alray-locks/run-1/_lock.json"))
        assert first["pid"] == os.getpid()
        deadline = time.monotonic() + 10
        while json.loads(fs.cat_file("alray-locks/run-1/_lock.json"))["heartbeat"] == \
                first["heartbeat"]:
            assert time.monotonic() < deadline, "the heartbeat did not change within 10 s"
            threading.Event().wait(0.01)
    fs.invalidate_cache()
    assert fs.find("alray-locks") == []


def test_s3_threads_racing_have_one_winner(bucket):
    uri, storage, _ = bucket
    start = threading.Barrier(_RACERS)

    def race(_):
        start.wait(timeout=60)
        try:
            return OutputLock.acquire(uri, storage)
        except ConfigError:
            return None

    with ThreadPoolExecutor(_RACERS) as pool:
        locks = [lock for lock in pool.map(race, range(_RACERS)) if lock is not None]
    assert len(locks) == 1
    locks[0].release()


def test_s3_refused_credentials_name_the_field(s3_strict_server):
    with pytest.raises(ConfigError, match=r"^output\.uri: access to 's3://results/run-1' was "
                                          r"refused \(.*AWS_ACCESS_KEY_ID"):
        OutputLock.acquire("s3://results/run-1", {"s3": {"endpoint_url": s3_strict_server}})


def test_memory_filesystem_gives_an_advisory_lock():
    uri = "memory://alray-lock-test/out"
    fs = fsspec.filesystem("memory")
    try:
        with OutputLock.acquire(uri) as lock:
            assert lock.advisory is True
            assert json.loads(fs.cat_file("/alray-lock-test/out/_lock.json"))["pid"] == os.getpid()
            with pytest.raises(ConfigError, match="is in use by another alray run"):
                OutputLock.acquire(uri)
        assert not fs.exists("/alray-lock-test/out/_lock.json")
    finally:
        if fs.exists("/alray-lock-test"):
            fs.rm("/alray-lock-test", recursive=True)
