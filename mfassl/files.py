"""Writing files without losing what the user owns: one atomic write, one output guard.

**Atomic writes.** :func:`atomic_path` is the one write-to-a-temporary-file-then-rename of the project; every
file a command or a bundle writes whole (checkpoints, encoder files and their sidecars, reports, histories,
cache items, overlays, label studies) goes through it or through its forms :func:`atomic_write` (a writer
callback on an open binary file: ``torch.save``, ``np.save``), :func:`write_bytes`, :func:`write_text`,
:func:`write_json` and :func:`save_figure`. The data goes to a hidden temporary file in the target's folder
(``.<name>.<random>.tmp``), is flushed and ``fsync``\\ ed, gets the mode a plain ``open()`` would give it (the mode of the file it replaces,
else ``0o666`` less the user's umask) and is renamed over the target; readers see the old file or the new one,
never a part. Whatever fails (the writer, a full disk, an interrupt), the temporary file is removed and an
earlier file is left as it was. A full disk or an exceeded quota (``ENOSPC``, ``EDQUOT``, also when a library
wraps it, as ``torch.save``'s ``unexpected pos ...`` does) raises :class:`NoSpaceError`, whose message starts
with ``no space left on <path>``.

**The output guard.** :class:`OutputGuard` is what every command that writes a file the user names checks
before it reads or writes anything:

- an output is never an input of the same command (the same file by path, link or inode, a sidecar such as
  ``x.json`` of ``x.pt`` included, and every later input of the same invocation): :class:`OutputIsInputError`,
  whatever ``--overwrite`` says;
- two outputs of one invocation are never one file;
- an existing file is appended to, repaired or replaced only when it is recognisably the command's own output
  (a recogniser checks its format first); any other existing file is refused (:class:`ForeignOutputError`)
  unless the user passed ``--overwrite``, which replaces it.

:func:`json_lines_recogniser` and :func:`repair_json_lines` are the recogniser and the repair of the JSON-lines
files that ``axes`` and ``landmarks`` append to (a last line cut short by a killed run is dropped before
appending, and only after the file is recognised); :func:`read_json_lines` is the one reader of JSON lines
(axes files, landmark files, prediction files), each caller checking its own records.

Example::

    guard = OutputGuard(inputs=[model, model.with_suffix(".json")], overwrite=args.overwrite)
    guard.check(out, "--out", recognise=is_export)        # "new", "own" or "overwrite"; refusals raise
    atomic_write(out, lambda f: torch.save(state, f))      # + NoSpaceError on a full disk
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Mapping

__all__ = [
    "NoSpaceError",
    "OutputRefusedError",
    "OutputIsInputError",
    "ForeignOutputError",
    "OutputGuard",
    "atomic_path",
    "atomic_write",
    "write_bytes",
    "write_text",
    "write_json",
    "save_figure",
    "no_space_reported",
    "same_file",
    "json_lines_recogniser",
    "read_json_lines",
    "repair_json_lines",
]

logger = logging.getLogger(__name__)

_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


# ---------------------------------------------------------------------------------------------- errors
class NoSpaceError(OSError):
    """The disk (or the user's quota) is full; the message starts with ``no space left on <path>``.

    Attributes:
        path: the file that could not be written.
    """

    def __init__(self, path: str | os.PathLike, detail: str = "", quota: bool = False) -> None:
        self.path = Path(path)
        what = "disk quota exceeded" if quota else f"{_free_space(self.path.parent)} free on its file system"
        self.message = f"no space left on {self.path} ({what})" + (f"; {detail}" if detail else "")
        super().__init__(errno.EDQUOT if quota and hasattr(errno, "EDQUOT") else errno.ENOSPC, self.message,
                         str(self.path))

    def __str__(self) -> str:
        return self.message


class OutputRefusedError(FileExistsError):
    """An output the command will not write; nothing was read or written. The message names the option, the
    file and what to do instead."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class OutputIsInputError(OutputRefusedError):
    """The output is (or would write over) an input of the same command; ``--overwrite`` does not lift it."""


class ForeignOutputError(OutputRefusedError):
    """The output exists and is not recognisably the command's own; ``--overwrite`` replaces it."""


# ---------------------------------------------------------------------------------------------- atomic writes
def _free_space(folder: Path) -> str:
    try:
        st = os.statvfs(folder)
    except OSError:
        return "no space"
    free = st.f_bavail * st.f_frsize
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.0f} {unit}" if unit == "bytes" else f"{free:.1f} {unit}"
        free /= 1024
    return "?"


def _no_space_errno(err: BaseException) -> int | None:
    """The ENOSPC/EDQUOT errno of ``err`` or of an exception it was raised from (torch wraps it), else None."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            return e.errno
        e = e.__cause__ or e.__context__
    return None


def _raise_if_no_space(err: BaseException, path: Path, detail: str) -> None:
    code = _no_space_errno(err)
    if code is not None and not isinstance(err, NoSpaceError):
        raise NoSpaceError(path, detail, quota=code != errno.ENOSPC) from err


@contextlib.contextmanager
def no_space_reported(path: str | os.PathLike, detail: str = "") -> Iterator[None]:
    """Turn a full disk inside the block into :class:`NoSpaceError` naming ``path`` (for files written in
    place, such as the JSON lines a command appends to)."""
    try:
        yield
    except BaseException as err:
        _raise_if_no_space(err, Path(path), detail)
        raise


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux ``/proc``)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(target: Path) -> int:
    """The mode ``open(target, "w")`` would leave: the existing file's, else ``0o666`` less the umask."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp", durable: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on leaving the block it replaces ``path`` at once.

    Args:
        path: the file to write (its folder is created; a link is followed, so the file it points to is
            replaced, as ``open()`` would write it).
        suffix: ends the temporary name: ``".tmp.png"`` or ``".part.nii.gz"`` lets a library that picks the
            format from the name (matplotlib, nibabel) write it.
        durable: ``fsync`` the file and its folder (off for cache items that can be recomputed).

    Yields:
        the temporary file (created empty, in ``path``'s folder).

    Raises:
        NoSpaceError: the disk or quota is full; nothing is left behind and an earlier ``path`` is untouched.
    """
    target = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=suffix)
        os.close(fd)
    except OSError as err:
        _raise_if_no_space(err, Path(path), "nothing was written")
        raise
    tmp = Path(name)
    existed = target.exists()
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(tmp, _mode_for(target))
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        _raise_if_no_space(err, Path(path), f"the earlier {target.name} is left as it was" if existed
                           else "nothing was written")
        raise
    if durable:
        _fsync_dir(folder)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], durable: bool = True) -> Path:
    """Write ``path`` atomically through ``write(binary file)`` (``lambda f: torch.save(obj, f)``,
    ``lambda f: np.save(f, array)``); see :func:`atomic_path`. Returns ``Path(path)``."""
    with atomic_path(path, durable=durable) as tmp:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`)."""
    return atomic_write(path, lambda fh: fh.write(data), durable=durable)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8", durable: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_path`)."""
    return write_bytes(path, text.encode(encoding), durable=durable)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, durable: bool = True,
               **dumps_kwargs: Any) -> Path:
    """Write ``json.dumps(obj, indent=indent, **dumps_kwargs)`` and a final newline to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=indent, **dumps_kwargs) + "\n", durable=durable)


def save_figure(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """``fig.savefig`` (a matplotlib ``Figure``) to ``path`` atomically, in the format of its suffix (``.png``)."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    return atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, **savefig_kwargs))


# ---------------------------------------------------------------------------------------------- the guard
def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` are one file: the same inode when both exist (links, hard links, ``..``),
    else the same resolved path (a file still to be written, an absent sidecar)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


class OutputGuard:
    """The outputs of one command run, checked against its inputs, each other and what already lies there.

    Args:
        inputs: every file the command reads (a sidecar it reads or may read included, whether or not it exists).
        overwrite: the user's ``--overwrite``: replace an existing file that is not the command's own (an input
            is never replaced).

    :meth:`check` each output before anything is read or written.
    """

    def __init__(self, inputs: Iterable[str | os.PathLike] = (), overwrite: bool = False) -> None:
        self.inputs: list[Path] = []
        self.overwrite = bool(overwrite)
        self._claimed: list[tuple[Path, str]] = []
        self.add_inputs(inputs)

    def add_inputs(self, paths: Iterable[str | os.PathLike]) -> None:
        """Count ``paths`` among the inputs too."""
        self.inputs.extend(Path(p) for p in paths)

    def input_at(self, path: str | os.PathLike) -> Path | None:
        """The input that ``path`` is (same file), or None."""
        return next((p for p in self.inputs if same_file(p, path)), None)

    def check(self, path: str | os.PathLike, option: str = "--out", value: str | os.PathLike | None = None,
              what: str = "", recognise: Callable[[Path], str | None] | None = None, kind: str = "",
              folder: bool = False) -> str:
        """Refuse ``path`` as an output unless it is safe to write; returns what lies there.

        Args:
            path: the file the command will write (or append to).
            option: the command-line option that named it, for the message (``"--out"``, ``"--png"``).
            value: what the user typed for ``option`` when it differs from ``path`` (a folder of overlays).
            what: what this output is, for the message (``"the overlay of scan.png"``, ``"the sidecar"``).
            recognise: the command's recogniser: ``recognise(path)`` is None when the existing file is the
                command's own output, else the reason it is not; without one every existing file is foreign.
            kind: what the command's own output is, for the message (``"an axes file"``).
            folder: the output is a folder the command fills (a missing or empty one is ``"new"``; ``recognise``
                judges a folder that holds something).

        Returns:
            ``"new"`` (nothing there), ``"own"`` (the command's own output: append, repair or replace it) or
            ``"overwrite"`` (a foreign file the user allowed to replace).

        Raises:
            OutputIsInputError: ``path`` is an input of this command, or another output of it.
            ForeignOutputError: ``path`` exists, is not the command's own and ``overwrite`` is off.
        """
        p = Path(path)
        if value is None or str(value) == str(p):
            head = f"{option} {p}"
        else:
            head = f"{option} {value}: " + (f"{what} ({p})" if what else str(p))
        found = self.input_at(p)
        if found is not None:
            also = "" if str(found) == str(p) else f" (the input {found})"
            raise OutputIsInputError(f"{head} is an input of this command{also}; an input is never written over, "
                                     f"not even with --overwrite: choose another {option}.")
        for other, other_what in self._claimed:
            if same_file(other, p):
                raise OutputIsInputError(f"{option} {value if value is not None else p}: {what or str(p)} would be "
                                         f"the same file as {other_what} of this command; choose another {option}.")
        self._claimed.append((p, what or f"the file of {option}"))
        if not os.path.lexists(p):
            return "new"
        if p.is_dir() != folder:
            what_is, wanted = ("file", "folder") if folder else ("folder", "file")
            raise ForeignOutputError(f"{head} is a {what_is}, not a {wanted}: choose another {option}.")
        if folder and not any(p.iterdir()):
            return "new"
        reason = recognise(p) if recognise is not None else "the command cannot tell it is its own"
        if reason is None:
            return "own"
        if self.overwrite:
            logger.warning("%s exists and is not %s (%s): replaced (--overwrite).", p, kind or "this command's output",
                           reason)
            return "overwrite"
        raise ForeignOutputError(f"{head} already exists and is not {kind or 'an output of this command'} "
                                 f"({reason}); nothing was read or written. Pass --overwrite to replace it, or "
                                 f"choose another {option}.")


# ---------------------------------------------------------------------------------------------- JSON lines
def json_lines_recogniser(is_record: Callable[[Mapping[str, Any]], bool], record: str,
                          describe: Callable[[Mapping[str, Any]], str | None] | None = None
                          ) -> Callable[[Path], str | None]:
    """A recogniser (:meth:`OutputGuard.check`) of a JSON-lines file the command appends to.

    The file is the command's own when it is empty, or when every line starts a JSON object (``{``), its first
    and last complete lines are records (``is_record``), and a last line without its newline (a write cut
    short) is a record or the start of one (``{"``, not valid JSON). Lines between are not parsed here: the
    command's reader does that.

    Args:
        is_record: whether a parsed line is one of the command's records.
        record: what a record is, for the reason (``"an axes record"``: ``line 1 is not an axes record``).
        describe: what a JSON object that is not a record is instead, for a sharper reason (``"holds an axes
            record of --kind brats"``); None falls back to ``is not <record>``.
    """

    def not_a_record(k: int, rec: Any) -> str:
        told = describe(rec) if describe is not None and isinstance(rec, dict) else None
        return f"line {k} {told}" if told else f"line {k} is not {record}"

    def parsed(k: int, line: bytes) -> str | None:
        try:
            rec = json.loads(line)
        except ValueError:
            return f"line {k} is not JSON"
        return None if isinstance(rec, dict) and is_record(rec) else not_a_record(k, rec)

    def recognise(path: Path) -> str | None:
        first: tuple[int, bytes] | None = None
        last: tuple[int, bytes] | None = None
        tail: tuple[int, bytes] | None = None
        try:
            with open(path, "rb") as fh:
                for k, raw in enumerate(fh, 1):
                    line = raw.strip()
                    if not line:
                        continue
                    if not line.startswith(b"{"):
                        return f"line {k} is not a JSON object"
                    if not raw.endswith(b"\n"):
                        tail = (k, line)
                        break
                    first = first or (k, line)
                    last = (k, line)
        except OSError as err:
            return f"cannot be read: {err.strerror or err}"
        for k, line in [x for x in (first, last) if x is not None]:
            reason = parsed(k, line)
            if reason is not None:
                return reason
        if tail is not None:  # the last line, without its newline
            k, line = tail
            try:
                rec = json.loads(line)
            except ValueError:  # cut short: ours only if it starts like a record
                if not line.startswith(b'{"'):
                    return f"line {k} is not JSON"
            else:
                if not (isinstance(rec, dict) and is_record(rec)):
                    return not_a_record(k, rec)
        return None

    return recognise


def read_json_lines(path: str | os.PathLike,
                    on_bad_line: Callable[[int, ValueError], None] | None = None) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of every non-blank line of a JSON-lines file, read one line at a time (memory does
    not grow with the file: an axes file of 224k images).

    Args:
        path: the UTF-8 file.
        on_bad_line: what to do with a line that is not JSON, called with its number and the error: raise (a reader
            that refuses the file) or return (the line is skipped). None: skipped with a warning naming the file
            and the line (a write cut short by a killed run).
    """
    with open(path, encoding="utf-8") as fh:
        for k, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as err:
                if on_bad_line is None:
                    logger.warning("%s: line %d is not JSON (a write cut short?); skipped.", path, k)
                else:
                    on_bad_line(k, err)
                continue
            yield k, value


def repair_json_lines(path: str | os.PathLike) -> int:
    """Cut a last line that a killed run left without its newline; returns the bytes dropped (logged).

    Call it only on a file recognised as the command's own (:func:`json_lines_recogniser`).
    """
    p = Path(path)
    size = p.stat().st_size
    if size == 0:
        return 0
    with open(p, "r+b") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return 0
        block = 1 << 16
        end = size
        cut = 0
        while end > 0:
            start = max(0, end - block)
            fh.seek(start)
            chunk = fh.read(end - start)
            k = chunk.rfind(b"\n")
            if k >= 0:
                cut = start + k + 1
                break
            end = start
        fh.truncate(cut)
    logger.warning("%s: dropped an incomplete last line (%d bytes) left by an interrupted run.", p, size - cut)
    return size - cut
