"""The resumable store: a directory of one JSON file per finished case, ``<case_hash>.json``,
each written once and atomically (a temporary file in the same directory, ``fsync``, then
``os.replace``, then ``fsync`` of the directory), and ``sweep.json``, the sweep's spec and the
grids run against it. A file is either absent or whole, so a sweep interrupted anywhere (Ctrl-C,
a killed worker, a killed client, a power cut after ``fsync``) keeps every case it finished."""

from __future__ import annotations

import datetime
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator, Union

from .. import __version__

__all__ = ["Store", "atomic_write", "SWEEP_FILE", "STORE_FORMAT"]

SWEEP_FILE = "sweep.json"
STORE_FORMAT = "signalprop.sweep/1"
_RECORD = re.compile(r"^[0-9a-f]{24}\.json$")


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


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _differences(old: dict, new: dict) -> list:
    return [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


class Store:
    """A sweep's directory. ``open(spec, cases, replace)`` claims it for ``spec``;
    :meth:`finished` lists stored case hashes; :meth:`write` stores one record."""

    def __init__(self, path: Union[str, os.PathLike], fsync: bool = True) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"store must be a path (str or os.PathLike), got {type(path).__name__}")
        self.path = Path(path)
        self.fsync = fsync

    def read_meta(self) -> dict:
        f = self.path / SWEEP_FILE
        if not f.is_file():
            raise ValueError(f"store {self.path} has no {SWEEP_FILE}: not a sweep store")
        meta = json.loads(f.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
            raise ValueError(f"{f} is not a signalprop sweep store ({STORE_FORMAT}) file")
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
            meta = {"format": STORE_FORMAT, "spec": spec, "runs": [], "version": __version__,
                    "created": _now()}
        if cases not in meta["runs"]:
            meta["runs"].append(cases)
        meta["updated"] = _now()
        atomic_write(self.path / SWEEP_FILE, json.dumps(meta, indent=1, allow_nan=False))

    def clear(self) -> None:
        """Delete this store's records and ``sweep.json`` (nothing else in the directory)."""
        for f in self.path.iterdir():
            if _RECORD.match(f.name) or f.name == SWEEP_FILE or \
                    (f.name.startswith(".") and f.name.endswith(".tmp")):
                f.unlink()

    def finished(self) -> set:
        """Hashes of the stored cases."""
        if not self.path.is_dir():
            return set()
        return {f.name[:-5] for f in self.path.iterdir() if _RECORD.match(f.name)}

    def write(self, record: dict) -> None:
        atomic_write(self.path / f"{record['case_hash']}.json",
                     json.dumps(record, allow_nan=False), self.fsync)

    def read(self, case_hash: str) -> dict:
        return json.loads((self.path / f"{case_hash}.json").read_text(encoding="utf-8"))

    def records(self) -> Iterator[dict]:
        for h in sorted(self.finished()):
            yield self.read(h)
