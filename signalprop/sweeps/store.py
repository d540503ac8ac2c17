"""The resumable store: a directory holding ``sweep.json`` (the sweep's spec and the grids run
against it, written atomically) and append-only logs of finished cases,
``records-<UTC time>-<pid>-<random>.jsonl``, one per writer (one per :func:`~.run.sweep` call).

Each finished case is one line of its writer's log, written whole by one ``write`` to the OS as
soon as the case finishes, so a killed process (Ctrl-C, a killed worker or client) loses no
finished case. Each line checks itself::

    {"sha256":"<64 hex>","case_hash":"<24 hex>","arrays":"<base64>","record":{...}}

where the digest is SHA-256 of the text between ``"sha256":"<hex>",`` and the final ``}``; a line
cut short by a crash, or damaged on disk, fails the check and is ignored (with a warning): its
case counts as not finished and a rerun computes it. ``arrays`` holds the bytes of the record's
numeric arrays, which its results reference by offset (:mod:`.codec`).

For machine crashes a thread ``fsync``-s the log (with ``sweep.json`` and the folder's entries)
when it is created and then about every second while the sweep runs (:data:`SYNC_INTERVAL`),
and the sweep syncs it once more at the end: a power cut loses at most about the last second of
finished cases. ``fsync=False`` never syncs (records then outlive any process but not the
machine); ``sweep.json`` is replaced atomically (rename) either way.

Readers merge every log of the store; a case stored twice (two sweeps running at once) keeps
the first, in the order of the log names (their creation times), then of the lines."""

from __future__ import annotations

import binascii
import datetime
import hashlib
import json
import os
import re
import secrets
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Iterator, Optional, Union

from .. import __version__
from ..results import VERSION_KEY
from .codec import dumps_packed, unpack

__all__ = ["Store", "LogWriter", "atomic_write", "encode_line", "decode_line", "split_body",
           "SWEEP_FILE",
           "STORE_FORMAT", "SYNC_INTERVAL", "LOG_PATTERN"]

SWEEP_FILE = "sweep.json"
STORE_FORMAT = "signalprop.sweep/2"
#: seconds: the most a finished record waits for its ``fsync`` while a sweep runs.
SYNC_INTERVAL = 1.0
#: names of the logs (records-<UTC time>-<pid>-<8 hex>.jsonl).
LOG_PATTERN = re.compile(r"^records-\d{8}T\d{12}Z-\d+-[0-9a-f]{8}\.jsonl$")

_HEAD = b'{"sha256":"'
_MID = b'",'
_CASE = b'"case_hash":"'
_ARR = b'","arrays":"'
_REC = b'","record":'
_BODY = len(_HEAD) + 64 + len(_MID)          # where the checked text starts
_HASH = re.compile(rb"^[0-9a-f]{24}$")
_HEX = re.compile(rb"^[0-9a-f]{64}$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, text: str, fsync: bool = True) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one; with
    ``fsync`` the data and the rename are on disk when it returns (else in the OS's cache, which
    outlives any process but not a machine crash)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if fsync:
        _fsync_dir(path.parent)


def encode_line(record: dict) -> bytes:
    """One log line for a wire record (:mod:`.codec`): ASCII, ending in a newline, no other."""
    h = record["case_hash"].encode("ascii")
    if not _HASH.match(h):
        raise ValueError(f"record case_hash must be 24 hex digits, got {record['case_hash']!r}")
    text, data = dumps_packed(record)
    body = b"".join((_CASE, h, _ARR, binascii.b2a_base64(data, newline=False), _REC,
                     text.encode("ascii")))
    return b"".join((_HEAD, hashlib.sha256(body).hexdigest().encode("ascii"), _MID, body, b"}\n"))


def decode_line(line: bytes) -> Optional[tuple]:
    """``(case_hash, start, end)`` of a line (without its newline) that checks, else None:
    ``line[start:end]`` is its body (:func:`split_body`)."""
    if not line.startswith(_HEAD) or not line.endswith(b"}") or len(line) < _BODY + 64:
        return None
    digest, body = line[len(_HEAD):len(_HEAD) + 64], line[_BODY:-1]
    if line[len(_HEAD) + 64:_BODY] != _MID or not _HEX.match(digest) or \
            hashlib.sha256(body).hexdigest().encode("ascii") != digest:
        return None
    if not body.startswith(_CASE) or body[len(_CASE) + 24:len(_CASE) + 24 + len(_ARR)] != _ARR:
        return None
    return body[len(_CASE):len(_CASE) + 24].decode("ascii"), _BODY, len(line) - 1


def split_body(body: bytes) -> tuple:
    """``(data, record_text)`` of a checked line's body: the arrays' bytes and the JSON text."""
    start = len(_CASE) + 24 + len(_ARR)
    end = body.index(b'"', start)                      # base64 has no quote
    if body[end:end + len(_REC)] != _REC:
        raise ValueError("sweep log line: no record after the arrays")
    return binascii.a2b_base64(body[start:end]), body[end + len(_REC):]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _differences(old: dict, new: dict) -> list:
    return [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


class LogWriter:
    """One writer's append-only log, created at once. :meth:`write` appends a record's line with
    one ``write`` to the OS (then a killed process loses nothing). With ``fsync``, a thread
    syncs what is new (the log, the files ``also``, the folder's entries) at once, then at most
    every ``interval`` seconds, off the caller's thread; :meth:`close` stops it and syncs the
    rest. After a failed write the log takes no more lines (none is appended after a torn
    one)."""

    def __init__(self, directory: Path, fsync: bool = True, interval: float = SYNC_INTERVAL,
                 also: tuple = ()) -> None:
        self.directory, self.fsync, self.interval = Path(directory), fsync, interval
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        self.path = self.directory / f"records-{stamp}Z-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        self.lines = 0
        self._fd: Optional[int] = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                                          os.O_APPEND, 0o644)
        self._lock = threading.Lock()
        self._dirty = False
        self._pending = [Path(p) for p in also]        # files to sync once
        self._dir_pending = True                       # the log's (and their) folder entry
        self._failed = False
        self._error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if fsync:
            self._thread = threading.Thread(target=self._run, name="signalprop-sweep-fsync",
                                            daemon=True)
            self._thread.start()

    def write(self, record: dict) -> None:
        line = encode_line(record)
        with self._lock:
            if self._failed or self._fd is None:
                raise OSError(f"the sweep log {self.path} is closed (or failed earlier); no "
                              "line is appended")
            try:
                n = os.write(self._fd, line)
                if n < len(line):                   # a short write (rare): finish the line
                    view = memoryview(line)[n:]
                    while view:
                        view = view[os.write(self._fd, view):]
            except BaseException:
                self._failed = True        # the descriptor is closed by close(), after the
                raise                      # sync thread has stopped
            self.lines += 1
            self._dirty = True

    def _sync(self) -> None:
        """Sync what is new: taken under the lock, synced outside it (writes go on meanwhile;
        the descriptor stays open until :meth:`close` has joined the thread)."""
        with self._lock:
            fd = self._fd if self._dirty else None
            files, self._pending = self._pending, []
            folder, self._dir_pending = self._dir_pending, False
            self._dirty = False
        for f in files:
            _fsync_file(f)
        if fd is not None:
            os.fsync(fd)
        if folder:
            _fsync_dir(self.directory)

    def _run(self) -> None:
        while True:
            try:
                self._sync()
            except OSError as exc:  # pragma: no cover - raised again by close
                self._error = exc
                return
            if self._stop.wait(self.interval):
                return

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            finally:
                self._fd = None

    def close(self) -> None:
        """Stop the sync thread, sync the rest (with ``fsync``) and close; idempotent."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        try:
            if self.fsync and self._fd is not None:
                self._sync()
            if self._error is not None:
                raise self._error
        finally:
            with self._lock:
                self._close_fd()


class Store:
    """A sweep's directory. ``open(spec, cases, replace)`` claims it for ``spec``;
    :meth:`scan` indexes the stored cases of every log; :meth:`write` appends one record to this
    store's writer (:class:`LogWriter`), :meth:`close` ends it."""

    def __init__(self, path: Union[str, os.PathLike], fsync: bool = True) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"store must be a path (str or os.PathLike), got {type(path).__name__}")
        self.path = Path(path)
        self.fsync = fsync
        self._writer: Optional[LogWriter] = None
        self._index: Optional[dict] = None
        self._meta_unsynced = False
        #: ``(log name, line number)`` of the lines the last :meth:`scan` ignored.
        self.damaged: list = []

    def read_meta(self) -> dict:
        f = self.path / SWEEP_FILE
        if not f.is_file():
            raise ValueError(f"store {self.path} has no {SWEEP_FILE}: not a sweep store")
        meta = json.loads(f.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or not str(meta.get("format", "")).startswith(
                "signalprop.sweep/"):
            raise ValueError(f"{f} is not a signalprop sweep store ({STORE_FORMAT}) file")
        if meta["format"] != STORE_FORMAT:
            raise ValueError(f"store {self.path} has the format {meta['format']} (signalprop "
                             f"{meta.get(VERSION_KEY, meta.get('version', '?'))}); this signalprop reads {STORE_FORMAT}: "
                             "rerun the sweep into a new store")
        return meta

    def open(self, spec: dict, cases: dict, replace: bool = False) -> None:
        """Create the store, or reopen one made for the same ``spec`` (recording ``cases``, the
        grid or case list, among its runs). A store of another spec is refused unless
        ``replace``, which deletes its records first."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"store {self.path} exists and is not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        meta = None
        if (self.path / SWEEP_FILE).exists():
            meta = self.read_meta()
            if meta["spec"] != spec:
                if not replace:
                    diff = _differences(meta["spec"], spec)
                    raise ValueError(
                        f"store {self.path} holds a sweep of another spec (differs in "
                        f"{', '.join(diff)}: stored {json.dumps({k: meta['spec'].get(k) for k in diff})}, "
                        f"asked {json.dumps({k: spec.get(k) for k in diff})}); use another "
                        "store, or replace=True (--replace) to delete its results")
                self.clear()
                meta = None
        elif any(self.path.iterdir()):
            if not replace:
                raise ValueError(f"store {self.path} is a non-empty directory without "
                                 f"{SWEEP_FILE}; use an empty or new directory")
        if meta is None:
            meta = {"format": STORE_FORMAT, "spec": spec, "runs": [], VERSION_KEY: __version__,
                    "created": _now()}
        if cases not in meta["runs"]:
            meta["runs"].append(cases)
            meta["updated"] = _now()
            # renamed into place now (whole for every process); synced with the log, off this
            # thread (:meth:`start_log`), or at :meth:`close`
            atomic_write(self.path / SWEEP_FILE, json.dumps(meta, indent=1, allow_nan=False),
                         False)
            self._meta_unsynced = self.fsync

    def logs(self) -> list:
        """The store's logs, oldest first (by name: creation time, pid, random)."""
        if not self.path.is_dir():
            return []
        return sorted(f for f in self.path.iterdir() if LOG_PATTERN.match(f.name))

    def clear(self) -> None:
        """Delete this store's logs and ``sweep.json`` (nothing else in the directory)."""
        self.close()
        for f in self.path.iterdir():
            if LOG_PATTERN.match(f.name) or f.name == SWEEP_FILE or \
                    (f.name.startswith(".") and f.name.endswith(".tmp")):
                f.unlink()
        self._index = None

    def scan(self) -> dict:
        """Case hash -> ``(log, offset, length)`` of the body of its first line that checks,
        over every log.
        Lines that fail their check are listed in :attr:`damaged` and warned about."""
        index: dict = {}
        damaged = []
        for log in self.logs():
            data = log.read_bytes()
            pos = 0
            for number, line in enumerate(data.split(b"\n"), 1):
                end = pos + len(line)
                complete = end < len(data)           # followed by its newline
                if line or complete:
                    got = decode_line(line) if complete else None
                    if got is None:
                        damaged.append((log.name, number))
                    elif got[0] not in index:
                        index[got[0]] = (log, pos + got[1], got[2] - got[1])
                pos = end + 1
        self.damaged = damaged
        self._index = index
        if damaged:
            where = ", ".join(f"{name} line {n}" for name, n in damaged[:3])
            warnings.warn(f"sweep store {self.path}: ignored {len(damaged)} damaged line(s) "
                          f"({where}{', ...' if len(damaged) > 3 else ''}): a write cut short by "
                          "a crash, or damage on disk; those cases count as not finished and a "
                          "rerun computes them", UserWarning, stacklevel=3)
        return index

    def finished(self) -> set:
        """Hashes of the stored cases."""
        return set(self.scan())

    def read(self, case_hash: str) -> dict:
        """The stored record of ``case_hash`` (its JSON-able form, arrays as lists)."""
        return self.read_many([case_hash])[0]

    def read_many(self, hashes) -> list:
        """The stored records of ``hashes``, in that order, each log read once."""
        if self._index is None or any(h not in self._index for h in hashes):
            self.scan()
        texts: dict = {}
        out = []
        for h in hashes:
            log, offset, length = self._index[h]
            if log not in texts:
                texts[log] = log.read_bytes()
            out.append(self._decode(texts[log][offset:offset + length], h, log))
        return out

    def _decode(self, body: bytes, case_hash: str, log: Path) -> dict:
        data, text = split_body(body)
        record = json.loads(text)
        record["results"] = unpack(record["results"], data)
        if record.get("case_hash") != case_hash:
            raise ValueError(f"sweep store {self.path}: {log.name} holds a record of "
                             f"{record.get('case_hash')!r} under {case_hash!r}")
        return record

    def records(self) -> Iterator[dict]:
        """Every stored record, by case hash."""
        yield from self.read_many(sorted(self.scan()))

    def start_log(self) -> None:
        """Create this store's log (its sync thread also syncs a new ``sweep.json``)."""
        if self._writer is None:
            also = (self.path / SWEEP_FILE,) if self._meta_unsynced else ()
            self._writer = LogWriter(self.path, self.fsync, also=also)
            self._meta_unsynced = False

    def write(self, record: dict) -> None:
        """Append a wire record to this store's log (created at the first write)."""
        self.start_log()
        self._writer.write(record)

    def close(self) -> None:
        """Sync and close this store's log, if any (a later :meth:`write` starts a new one);
        sync ``sweep.json`` if it was rewritten and no log synced it."""
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            self._writer = None
        if self._meta_unsynced:
            _fsync_file(self.path / SWEEP_FILE)
            _fsync_dir(self.path)
            self._meta_unsynced = False
