"""Atomic artefact writes: build under a temporary name beside the target, then rename.

An export either leaves the complete artefact at its path or leaves the directory as it was:
an error or a `KeyboardInterrupt` while writing removes the temporary files, and an existing
artefact is only replaced when the caller asked for it, after the new one is complete.
"""

import contextlib
import os
import pathlib
import shutil
import uuid


def check_output_path(path, overwrite, kind, marker="saved_model.pb"):
    """Raises early if `path` cannot receive an artefact of `kind` ("file" or "directory").

    An existing output raises `FileExistsError` unless `overwrite` (an empty directory
    awaiting a directory is no output); even then a directory is only replaced by a
    directory when it holds `marker` (a SavedModel's `saved_model.pb`, a report), so a
    mistyped path cannot wipe an unrelated folder, and a file never replaces a directory.

    Returns:
        The absolute path, as a string.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.lexists(path):
        return path
    if kind == "directory" and _empty_directory(path):
        return path
    if not overwrite:
        raise FileExistsError(
            f"{path} already exists. Pass overwrite=True (--overwrite on the command line) to "
            "replace it, or choose another path."
        )
    if os.path.isdir(path) and not os.path.islink(path):
        if kind != "directory":
            raise IsADirectoryError(
                f"{path} is a directory; refusing to replace it with a {kind}. Give a file path."
            )
        if not os.path.isfile(os.path.join(path, marker)):
            raise FileExistsError(
                f"{path} is a directory that this command did not write (no {marker}); "
                "refusing to replace it even with overwrite=True. Remove it yourself or choose "
                "another path."
            )
    return path


def _empty_directory(path):
    return os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def _make_parents(directory):
    """Creates `directory` and its missing parents; returns those it created, deepest first."""
    created = []
    current = directory
    while current and not os.path.exists(current):
        created.append(current)
        current = os.path.dirname(current)
    os.makedirs(directory, exist_ok=True)
    return created


@contextlib.contextmanager
def atomic_output(path, overwrite=False, kind="file", marker="saved_model.pb"):
    """Context manager yielding a temporary path that becomes `path` when the block succeeds.

    The temporary path is in the same directory as `path` (so the final `os.rename` is
    atomic) and hidden (`.name.tmp-xxxxxxxx`). Write a file or a directory there. If the
    block raises anything, `KeyboardInterrupt` included, the temporary path and any parent
    directories this call created are removed and the exception propagates. An existing
    `path` is replaced only with `overwrite=True`: it is renamed aside, the new artefact
    renamed in, and the old one deleted last, so a failure at any point keeps one of them.

    Args:
        path: the final path of the artefact.
        overwrite: replace an existing artefact. Defaults to `False`.
        kind: `"file"` or `"directory"`, for the overwrite safety checks. Defaults to `"file"`.
        marker: the file that marks a directory this kind of command wrote, which alone it
            may replace (`check_output_path`). Defaults to a SavedModel's `saved_model.pb`.
    """
    path = check_output_path(path, overwrite, kind, marker)
    parent, name = os.path.split(path)
    created = _make_parents(parent)
    token = uuid.uuid4().hex[:8]
    tmp = os.path.join(parent, f".{name}.tmp-{token}")
    try:
        yield tmp
        if not os.path.lexists(tmp):
            raise RuntimeError(f"Nothing was written to the temporary path {tmp}.")
        # Checked again: something may have appeared at `path` while we were writing.
        check_output_path(path, overwrite, kind, marker)
        if _empty_directory(path):
            os.rmdir(path)
        if os.path.lexists(path):
            backup = os.path.join(parent, f".{name}.old-{token}")
            os.rename(path, backup)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(backup, path)
                raise
            _remove(backup)
        else:
            os.rename(tmp, path)
    except BaseException:
        _remove(tmp)
        for directory in created:
            with contextlib.suppress(OSError):
                os.rmdir(directory)  # only if still empty
        raise


def _write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_bytes(path, data, overwrite=False):
    """Writes `data` to `path` atomically (see `atomic_output`); returns the absolute path."""
    with atomic_output(path, overwrite, kind="file") as tmp:
        _write_file(tmp, data)
    return os.path.abspath(os.fspath(path))


def write_text(path, text, overwrite=False):
    """Writes `text` (UTF-8) to `path` atomically; returns the absolute path."""
    return write_bytes(path, text.encode("utf-8"), overwrite)


@contextlib.contextmanager
def replacing_folder(path, marker, keep_unfinished=True):
    """Runs the body in an empty folder `path`, for a command that fills a folder in place.

    A finished earlier output there (it holds `marker`, written last) is moved aside to
    `.<name>.replaced` first and put back if the body fails or is interrupted, deleted once
    it succeeds; an unfinished one (no `marker`) is removed. A failed body's own partial
    output stays for inspection with `keep_unfinished`, else goes (an empty folder that was
    there stays). Check `path` with `check_output_path(..., "directory", marker)` before
    any work: it refuses a folder the command did not write.
    """
    path = pathlib.Path(path)
    aside = path.with_name(f".{path.name}.replaced")
    if aside.exists():  # left by a run killed outright: the earlier output is still in it
        raise FileExistsError(
            f"{aside} holds an output an interrupted replace moved aside; move it back to "
            f"{path} or delete it, then rerun."
        )
    existed = path.exists()
    finished = existed and (path / marker).exists()
    if finished:
        path.rename(aside)
    elif existed:
        shutil.rmtree(path)  # an unfinished output: nothing finished is lost
    path.mkdir(parents=True)
    try:
        yield path
    except BaseException:
        if finished or not keep_unfinished:
            shutil.rmtree(path, ignore_errors=True)
        if finished:
            aside.rename(path)
        elif existed and not keep_unfinished:
            path.mkdir()
        raise
    if finished:
        shutil.rmtree(aside)
