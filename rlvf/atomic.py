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

No torch import; safe to call from any thread (the umask is read without changing it where the
platform allows, see ``umask``).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable

from rlvf.errors import UserError

__all__ = ["umask", "default_mode", "honour_umask", "honour_umask_tree", "publish_file", "write_bytes_atomic",
           "write_text_atomic", "write_dir_atomic"]


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
