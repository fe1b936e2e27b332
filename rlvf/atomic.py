"""Files and folders written under a temporary name and renamed into place, with the modes ``open()`` gives.

A file created with ``tempfile.mkstemp`` (and so by ``safetensors.torch.save_file``, which writes
through one) is mode 0600, and ``tempfile.mkdtemp`` makes 0700 directories: renamed into place, an
adapter would then be unreadable by a vLLM server running as another user. Everything rlvf writes
through a temporary name is therefore given the mode a plain ``open(path, "w")`` / ``mkdir`` would
give it — 0666 / 0777 minus the process umask (0644 / 0755 with the usual umask 022) — before it is
renamed into place:

    save_file(tensors, str(tmp))
    publish_file(tmp, path)        # chmod by the umask, fsync, os.replace

A folder (an adapter, a merged model) is written whole into a temporary directory beside its target
and swapped in (``write_dir_atomic``), keeping the user's other files if asked.

Before a command writes anything, ``check_writable_dir`` (or ``writable_dir_problem``) tells whether
each directory it will write can be made and written, so an output dir under /proc, a path under a
file, a FIFO, a symbolic-link loop or a read-only directory stops it in one line naming the key.

No torch import; safe to call from any thread (the umask is read without changing it where the
platform allows, see ``umask``).
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import uuid
from pathlib import Path
from typing import Callable

from rlvf.errors import UserError

__all__ = ["umask", "default_mode", "honour_umask", "honour_umask_tree", "publish_file", "write_bytes_atomic",
           "write_text_atomic", "write_dir_atomic", "dir_problem", "writable_dir_problem", "check_writable_dir"]


def umask() -> int:
    """The process umask, e.g. 0o022.

    Read from /proc/self/status on Linux (no side effect). Elsewhere it can only be read by setting
    it: it is set to 0o077 for that instant, so a file another thread creates meanwhile is at worst
    more private than asked, never world-writable.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o077)
    os.umask(old)
    return old


def default_mode(directory: bool = False) -> int:
    """The mode ``open()`` (0o666) or ``mkdir`` (0o777) gives a new file or directory under the umask."""
    return (0o777 if directory else 0o666) & ~umask()


def honour_umask(path: str | Path) -> None:
    """chmod ``path`` (a file or a directory; links are left alone) to ``default_mode``."""
    path = Path(path)
    if path.is_symlink():
        return
    os.chmod(path, default_mode(directory=path.is_dir()))


def honour_umask_tree(root: str | Path) -> None:
    """``honour_umask`` on ``root`` and everything under it (symlinks are not followed)."""
    mask = umask()
    for dirpath, _, filenames in os.walk(root):  # never descends into symlinked directories
        os.chmod(dirpath, 0o777 & ~mask)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


def publish_file(tmp: str | Path, path: str | Path) -> None:
    """Give the finished temporary file ``tmp`` the umask's mode, fsync it and rename it onto ``path``.

    ``tmp`` must be on the same filesystem as ``path`` (beside it): the rename is atomic, so readers
    see the old file or the new one, never half of one.
    """
    honour_umask(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a unique temporary file beside ``path``, then ``publish_file`` it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        publish_file(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """``write_bytes_atomic`` of ``text`` in UTF-8."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_dir_atomic(out_dir: str | Path, write: Callable[[Path], None],
                     keep: Callable[[str], bool] | None = None) -> Path:
    """Run ``write(tmp)`` on a fresh temp dir beside ``out_dir``, then swap it in for ``out_dir``.

    What ``write`` made gets the modes the umask gives (0644/0755 with umask 022, not mkstemp's
    0600), so a server running as another user can read it. An existing ``out_dir`` is replaced
    only after the new folder is complete, so a crash leaves either the old folder or the new one,
    never half of one. Without ``keep`` the old folder is replaced whole; with it, every entry of
    the old folder that ``write`` did not produce and ``keep(name)`` accepts is carried over
    (hard-linked, or copied where links are impossible) before the swap, so it is never lost.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write(tmp)
        honour_umask_tree(tmp)  # before the carried-over files join: their modes stay theirs
        if keep is not None and out.is_dir():
            _carry_over(out, tmp, keep)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _carry_over(old: Path, new: Path, keep: Callable[[str], bool]) -> None:
    """Hard-link (or copy) into ``new`` each entry of ``old`` that ``new`` lacks and ``keep`` accepts."""
    for entry in sorted(old.iterdir()):
        target = new / entry.name
        if target.exists() or target.is_symlink() or not keep(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(target))


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; an existing ``out`` goes only once ``tmp`` is in place."""
    if not out.exists():
        tmp.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)  # put the previous folder back
        raise
    shutil.rmtree(old)


# ----------------------------------------------------------------------------- can a directory be written?


_KINDS = ((stat.S_ISREG, "a file"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a directory")


def _stat_problem(path: Path, err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return f"{path} {'is' if path.is_symlink() else 'passes through'} a symbolic link loop"
    return f"{path} cannot be looked at ({err.strerror or err})"


def dir_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be, or become, a directory, found without writing anything; None if it can.

    The path itself must be a directory or absent (not a file, FIFO, socket or device, not a
    symbolic link that loops or points nowhere); when absent, its nearest existing ancestor must be
    a directory.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as err:
        if err.errno == errno.ENOENT and p.is_symlink():
            return f"{path} is a symbolic link to {os.readlink(p)}, which does not exist"
        if err.errno not in (errno.ENOENT, errno.ENOTDIR):
            return _stat_problem(p, err)
    else:
        if stat.S_ISDIR(st.st_mode):
            return None
        return f"{path} exists and is not a directory ({_kind(st.st_mode)})"
    for parent in p.absolute().parents:  # the nearest existing ancestor must be a directory
        try:
            st = os.stat(parent)
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.ENOTDIR):
                continue
            return f"{path} cannot be created: {_stat_problem(parent, err)}"
        if stat.S_ISDIR(st.st_mode):
            return None
        return f"{path} cannot be created: {parent} is not a directory ({_kind(st.st_mode)})"
    return None


def _nearest_existing(p: Path) -> Path:
    """``p`` or its nearest existing ancestor, named as ``p`` is (a relative path ends at '.')."""
    return next((a for a in (p, *p.parents) if a.is_dir()), Path.cwd())


def writable_dir_problem(path: str | Path) -> str | None:
    """``dir_problem``, else why nothing can be written in (or created as) ``path``; None if it can.

    Write permission is found out by trying, as the command itself would: a temporary file inside
    ``path`` when it exists, else a temporary directory in its nearest existing ancestor. Either is
    removed at once, so nothing is left behind. Trying is the only test that holds for every case:
    ``os.access`` says yes to root on /proc (where mkdir fails with ENOENT) and on /sys (EPERM).
    """
    problem = dir_problem(path)
    if problem:
        return problem
    p = Path(path)
    where = _nearest_existing(p)
    try:
        if where == p:
            fd, probe = tempfile.mkstemp(prefix=".rlvf-write-test-", dir=p)
            os.close(fd)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".rlvf-write-test-", dir=where))
    except OSError as err:
        reason = err.strerror or type(err).__name__
        if where == p:
            return f"{path} is not writable ({reason})"
        return f"{path} cannot be created in {where} ({reason})"
    return None


def check_writable_dir(path: str | Path, key: str) -> None:
    """UserError('<key>: <why>') when ``writable_dir_problem(path)`` finds one."""
    problem = writable_dir_problem(path)
    if problem:
        raise UserError(f"{key}: {problem}")
