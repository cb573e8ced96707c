"""Failing well where files are written: output folders checked before any work starts, writes whose
failure names the file, and cleanups whose own failure never hides the error that made them run.

Both command lines (``python -m algos.train``, ``python -m benchmarks run``) and the library's writers
(training logs, result files, report and plots) share these, so every such failure reads the same way:
the thing at fault, what went wrong, and what to do. ``benchmarks`` imports them from here, a lower layer.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path


class OutputError(OSError):
    """An output folder or file cannot be written; the message names it and says what to do.

    An ``OSError`` (with the original ``errno``), so code that handles disk errors still catches it."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno

    def __reduce__(self) -> tuple[type[OutputError], tuple[str, int | None], dict]:
        return type(self), (str(self), self.errno), self.__dict__  # errno and notes survive worker processes


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (what a ``mkdir -p`` of ``path`` would build on)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def output_folder_problem(folder: str | Path) -> str | None:
    """What stops files being written in ``folder``, in a few words, else None.

    The folder (and its parents) is created, and a probe file is written and removed in it: permission
    bits do not tell the whole story (read-only mounts, ACLs, quotas), and writing is what counts.
    """
    folder = Path(folder)
    base = nearest_existing(folder)
    if not base.is_dir():
        return "it is a file, not a folder" if base == Path(os.path.abspath(folder)) else \
            f"{base} is a file, so no folder can be made under it"
    probe = folder / f".write-test.{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        return f"cannot write files there ({err.strerror or err})"
    return None


def check_output_folder(folder: str | Path, option: str = "--out") -> Path:
    """``folder``, created and proved writable, else an :class:`OutputError` naming ``option`` and the fix.

    Run it before loading or training anything, so a bad ``--out`` costs nothing."""
    folder = Path(folder)
    problem = output_folder_problem(folder)
    if problem is not None:
        raise OutputError(f"{option} {folder}: {problem}; give a folder you can write to "
                          f"(it is created if missing)")
    return folder


@contextlib.contextmanager
def writing(path: str | Path, what: str = "file") -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` into an :class:`OutputError` that names it (a full disk
    otherwise reports only a temp file's name, or none), keeping the errno and the original as cause."""
    try:
        yield
    except OutputError:
        raise
    except OSError as err:
        named = OutputError(f"could not write the {what} {path}: {err.strerror or err}", err.errno)
        for note in getattr(err, "__notes__", []):  # e.g. a failed cleanup inside the block: still shown
            named.add_note(note)
        raise named from err


def run_cleanup(action: Callable[[], object], what: str, during: BaseException | None = None) -> None:
    """Run the cleanup ``action``. While an error ``during`` propagates, a failing cleanup becomes a note on
    that error instead of a second exception that hides it: the first error is what the user sees."""
    if during is None:
        action()
        return
    try:
        action()
    except Exception as failure:
        during.add_note(f"(afterwards, {what} failed too: {type(failure).__name__}: {failure})")


@contextlib.contextmanager
def cleanup(action: Callable[[], object], what: str, *, only_on_error: bool = False) -> Iterator[None]:
    """Run ``action`` when the block ends (or only when it fails), through :func:`run_cleanup`."""
    try:
        yield
    except BaseException as err:
        run_cleanup(action, what, during=err)
        raise
    if not only_on_error:
        run_cleanup(action, what)


def error_text(err: BaseException) -> str:
    """An error's message with its notes (what a command line prints instead of a traceback)."""
    return "\n".join([str(err), *getattr(err, "__notes__", [])])
