"""Atomic file writes, hashing and resumable job lists: a killed run leaves the old file or none, never half of one."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') bytes to disk: a rename after a crash never exposes a hole."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
    try:
        yield Path(tmp)
        _fsync(Path(tmp))
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory in a temp sibling; on success swap it in for `path` (old contents removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        for f in [*tmp.rglob("*"), tmp]:  # files written straight into the folder (save_file, PIL) too
            _fsync(f)
        os.replace(tmp, path)
        _fsync(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cached_arrays(
    arrays: list, cache: Path | None, code: str, compute: Callable, entries: int = 64, rows: int | None = None
):
    """`compute(arrays)` (an array), kept in the folder `cache` under a key of the arrays' exact bytes and `code`
    (the calling stage's code hash): what every concept computes from the same inputs is computed once. Entries
    made by other code are removed on the next write, so the cache never outlives the code that wrote it, and only
    the newest `entries` are kept; an unreadable entry, or one without the `rows` the caller expects, is computed
    again. Without a folder, it is computed."""
    import io

    import numpy as np

    if cache is None:
        return compute(arrays)
    h = hashlib.sha256()
    for a in arrays:
        h.update(f"{a.shape}|{a.dtype}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    prefix = code[:16]
    file = Path(cache) / f"{prefix}-{h.hexdigest()[:32]}.npy"
    try:
        out = np.load(file, allow_pickle=False)
        if rows is None or out.shape[0] == rows:
            file.touch()  # recently used: kept longest
            return out
    except (OSError, ValueError):  # not there (or removed meanwhile) or unreadable: computed again
        pass
    Path(cache).mkdir(parents=True, exist_ok=True)
    kept = sorted(Path(cache).glob("*.npy"), key=lambda f: f.stat().st_mtime, reverse=True)
    for i, old in enumerate(kept):  # other code's entries (never read again) and all but the newest few
        if not old.name.startswith(prefix + "-") or i >= entries - 1:
            old.unlink(missing_ok=True)
    out = np.asarray(compute(arrays))
    buf = io.BytesIO()
    np.save(buf, out, allow_pickle=False)
    atomic_write_bytes(file, buf.getvalue())
    return out


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (work-folder keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@contextlib.contextmanager
def work_folder(root: Path, prefix: str, *parts: Any, owner: bool = True) -> Iterator[Path]:
    """`root/<prefix>-<fingerprint(parts)>`: a stage's resumable state (checkpoints, finished jobs) for exactly
    these inputs. `parts` must cover everything the state depends on (the stage's code hash, params, data):
    a rerun with the same parts resumes, any other starts afresh. Folders of the same prefix with other keys
    can never be used again and are removed on entry; this one is removed when the block finishes without
    an error (kept for the resume when it raises or the process is killed). Only the `owner` removes
    folders (under torchrun: rank 0)."""
    root = Path(root)
    work = root / f"{prefix}-{fingerprint(*parts)}"
    for old in root.glob(f"{prefix}-*") if root.is_dir() and owner else []:
        if old != work and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    yield work
    if owner:
        shutil.rmtree(work, ignore_errors=True)


def run_recorded(
    jobs: list[tuple[str, str]], done_file: Path, desc: str, unit: str, run: Callable[[str, str], dict]
) -> dict:
    """`run(a, c) -> dict` for every job (a, c) not yet in `done_file`, each result recorded there as soon as
    it finishes, so a killed run resumes at the next job. Returns {"a/c": result} for all jobs."""
    from pipeline.core.progress import bar

    done: dict = json.loads(done_file.read_text()) if done_file.is_file() else {}
    keys = [f"{a}/{c}" for a, c in jobs]
    with bar(desc, len(jobs), unit=unit, completed=sum(k in done for k in keys)) as b:
        for (a, c), key in zip(jobs, keys):
            if key in done:
                continue
            done[key] = run(a, c)
            done_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(done_file, done)
            b.advance(1)
    return done
