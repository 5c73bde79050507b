"""The one atomic writer: exports and every serving target write through it.

A target renders ``{relative path: content}`` and hands it to :func:`write_tree`; an export fills
the folder :func:`staged_tree` gives it. The writer builds the complete new
tree in a staging folder on the same filesystem, fsyncs it, and swaps it into place with one atomic
``renameat2(RENAME_EXCHANGE)`` (or a plain ``rename`` when the destination is new). A reader (a server
polling its repository) therefore sees the old tree or the new one, never a mixture, even if this
process is interrupted or killed at any moment.

Existing content is kept: files of the old tree that the new render does not claim are carried over
as hard links (cheap, and never modified in place), so adding version 2 keeps version 1. Paths a
render claims *exclusively* (a version folder) are replaced only with ``force``.

Example:
    >>> write_tree(Path("repo/minilm"), {"config.pbtxt": "...", "1/model.py": "..."},
    ...            exclusive=["1"])                                     # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Mapping, Union

from .errors import OutputExistsError, TargetError

Content = Union[bytes, str, Path]
"""A file's bytes, its text (written as UTF-8), or a file/folder on disk to copy."""

_TMP_MARK = ".packager-tmp-"
_OLD = "old"  # where the fallback swap parks the previous tree inside a staging folder
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _check_rel(rel: str) -> PurePosixPath:
    p = PurePosixPath(rel)
    if p.is_absolute() or not p.parts or any(part in ("", ".", "..") for part in p.parts):
        raise TargetError(f"refusing to write outside the target folder: {rel!r}")
    return p


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the data files were synced
        pass
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # The path may be a hard link shared with the live tree: never truncate it, replace it.
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copy_existing(src: Path, dst: Path, skip: set[PurePosixPath]) -> None:
    """Carry the old tree over as hard links, leaving out ``skip`` paths (and everything under them)."""
    dst.mkdir(exist_ok=True)
    for root, dirs, files in os.walk(src):
        rel_root = PurePosixPath(Path(root).relative_to(src).as_posix())
        keep_dirs = []
        for d in dirs:
            if (rel := _carried(Path(root), rel_root, d, dst, skip)) is not None:
                (dst / rel).mkdir(exist_ok=True)
                keep_dirs.append(d)
        dirs[:] = keep_dirs
        for name in files:
            if (rel := _carried(Path(root), rel_root, name, dst, skip)) is not None:
                _link_or_copy(os.path.join(root, name), str(dst / rel))


def _carried(root: Path, rel_root: PurePosixPath, name: str, dst: Path, skip: set[PurePosixPath]) -> PurePosixPath | None:
    """The relative path of an entry of the old tree to carry over; None when it is skipped, or a
    symlink (re-created as such in ``dst``)."""
    rel = rel_root / name if str(rel_root) != "." else PurePosixPath(name)
    if rel in skip:
        return None
    if (root / name).is_symlink():
        os.symlink(os.readlink(root / name), dst / rel)
        return None
    return rel


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2``). Returns False when the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _staging_dirs(staging: Path, name: str, mark: str = _TMP_MARK) -> Iterator[tuple[Path, int]]:
    prefix = f".{name}{mark}"
    if not staging.is_dir():
        return
    for p in staging.iterdir():
        if p.name.startswith(prefix):
            try:
                yield p, int(p.name[len(prefix):].split("-", 1)[0])
            except ValueError:
                continue


def recover(dest: Path, staging: Path | None = None) -> None:
    """Clean up after writers that were killed: restore a parked old tree, delete stale staging folders.

    Only folders of processes that no longer run are touched, so a concurrent writer is left alone.
    """
    dest = Path(dest).absolute()
    staging = Path(staging).absolute() if staging else dest.parent
    for tmp, pid in _staging_dirs(staging, dest.name):
        if _pid_alive(pid) and pid != os.getpid():
            continue
        parked = tmp / _OLD
        if parked.is_dir() and not dest.exists():
            # Killed between the two renames of the fallback swap: the old tree is intact, put it back.
            os.rename(parked, dest)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _locked(staging: Path, name: str) -> Iterator[None]:
    """One writer per staging folder at a time, so concurrent builds cannot drop each other's versions.

    The lock is taken on the staging folder itself (``flock`` on a directory descriptor), so no lock
    file is left beside the user's output.
    """
    fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


_WORK_MARK = ".packager-work-"


@contextlib.contextmanager
def work_dir_beside(path: str | os.PathLike) -> Iterator[Path]:
    """A scratch folder beside ``path`` (same filesystem), removed afterwards.

    Scratch folders that killed processes left beside ``path`` are removed first, so a SIGKILL'd
    build leaves nothing behind after the next one.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale, pid in _staging_dirs(path.parent, path.name, _WORK_MARK):
        if not _pid_alive(pid):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{_WORK_MARK}{os.getpid()}-", dir=path.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_tree(
    dest: str | os.PathLike,
    *,
    force: bool = False,
    exclusive: Iterable[str] = (),
    keep_existing: bool = True,
    drop: Iterable[str] = (),
    staging: str | os.PathLike | None = None,
) -> Iterator[Path]:
    """Yield a folder to fill; on success it replaces ``dest`` in one atomic swap, on error it is removed.

    Args:
        dest: the folder to write (created with its parents if missing).
        force: replace ``exclusive`` paths that already exist (or, with ``exclusive`` empty and
            ``keep_existing`` false, the whole existing ``dest``).
        exclusive: paths this write owns (e.g. the version folder ``"1"``). If one exists and ``force``
            is not set, nothing is written and :class:`TargetError` is raised; with ``force`` the old one
            is dropped entirely (no stale files survive).
        keep_existing: start from the old tree (hard links), minus ``exclusive`` and ``drop`` paths.
            ``False`` starts empty: the new tree replaces the old one whole (needs ``force`` if it exists).
        drop: paths whose old content is always dropped (shared artifacts the caller regenerates).
        staging: where the staging folder goes; must be on the same filesystem as ``dest``. Default:
            ``dest``'s parent. A Triton target stages *outside* the model repository, because Triton
            refuses to start when the repository holds a folder it cannot load.

    Raises:
        TargetError: an exclusive path (or ``dest`` itself) exists without ``force``, or ``dest`` is a file.
    """
    dest = Path(dest).absolute()
    staging_dir = Path(staging).absolute() if staging else dest.parent
    staging_dir.mkdir(parents=True, exist_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    owned = {_check_rel(p) for p in exclusive}
    dropped = owned | {_check_rel(p) for p in drop}

    with _locked(staging_dir, dest.name):
        recover(dest, staging_dir)
        if dest.exists() and not dest.is_dir():
            raise TargetError(f"{dest} exists and is not a folder")
        if dest.is_dir() and not force:
            if not keep_existing:
                raise OutputExistsError(f"{dest} already exists; set force to replace it")
            taken = sorted(str(p) for p in owned if (dest / p).exists() or (dest / p).is_symlink())
            if taken:
                raise OutputExistsError(
                    f"{dest} already has {', '.join(taken)}; set force to replace it (or choose another version or name)")
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}{_TMP_MARK}{os.getpid()}-", dir=staging_dir))
        try:
            new = tmp / "new"
            if dest.is_dir() and keep_existing:
                _copy_existing(dest, new, dropped)
            else:
                new.mkdir()
            yield new
            _fsync_tree(new)
            if dest.is_dir():
                if not _exchange(new, dest):
                    # No atomic swap on this filesystem: park the old tree inside the staging folder first,
                    # so recover() can put it back if we die between the two renames.
                    os.rename(dest, tmp / _OLD)
                    os.rename(new, dest)
            else:
                os.rename(new, dest)
            _fsync_path(dest.parent, directory=True)
            _fsync_path(staging_dir, directory=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def write_tree(
    dest: str | os.PathLike,
    files: Mapping[str, Content],
    *,
    force: bool = False,
    exclusive: Iterable[str] = (),
    replace: Iterable[str] = (),
    staging: str | os.PathLike | None = None,
) -> Path:
    """Create or update the folder ``dest`` atomically with rendered files.

    Args:
        dest: the folder to write.
        files: relative path -> content. A :class:`~pathlib.Path` value is copied from disk (a folder
            recursively); folders are copied before the byte/text entries, which may add files inside them.
        force, exclusive, staging: see :func:`staged_tree`.
        replace: paths whose old content is always dropped before writing (``drop`` of :func:`staged_tree`).

    Returns:
        ``dest`` as an absolute path.

    Raises:
        TargetError: an exclusive path exists without ``force``, or a path escapes ``dest``.
    """
    entries = {_check_rel(k): v for k, v in files.items()}
    with staged_tree(dest, force=force, exclusive=exclusive, drop=replace, staging=staging) as new:
        for rel, content in sorted(entries.items(), key=lambda kv: (not isinstance(kv[1], Path), str(kv[0]))):
            target = new.joinpath(*rel.parts)
            if isinstance(content, Path):
                if content.is_dir():
                    if target.exists() and not target.is_dir():
                        target.unlink()
                    shutil.copytree(content, target, symlinks=False, dirs_exist_ok=True,
                                    copy_function=_copy_replacing)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _copy_replacing(str(content), str(target))
            else:
                _write_file(target, content.encode("utf-8") if isinstance(content, str) else bytes(content))
    return Path(dest).absolute()


def _copy_replacing(src: str, dst: str) -> str:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(dst)
    shutil.copy2(src, dst)
    return dst


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            if not p.is_symlink():
                _fsync_path(p)
        _fsync_path(Path(dirpath), directory=True)
