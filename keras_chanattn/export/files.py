"""Atomic artefact writes: build under a temporary name beside the target, then rename.

An export either leaves the complete artefact at its path or leaves the directory as it was:
an error or a `KeyboardInterrupt` while writing removes the temporary files, and an existing
artefact is only replaced when the caller asked for it, after the new one is complete.
"""

import contextlib
import os
import shutil
import uuid


def check_output_path(path, overwrite, kind):
    """Raises early if `path` cannot receive an artefact of `kind` ("file" or "directory").

    An existing output raises `FileExistsError` unless `overwrite`; even then a directory is
    only replaced by a directory that looks like a SavedModel (it holds `saved_model.pb`),
    so a mistyped path cannot wipe an unrelated folder, and a file never replaces a directory.

    Returns:
        The absolute path, as a string.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.lexists(path):
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
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise FileExistsError(
                f"{path} is a directory that is not a SavedModel (no saved_model.pb); refusing "
                "to replace it even with overwrite=True. Remove it yourself or choose another path."
            )
    return path


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
def atomic_output(path, overwrite=False, kind="file"):
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
    """
    path = check_output_path(path, overwrite, kind)
    parent, name = os.path.split(path)
    created = _make_parents(parent)
    token = uuid.uuid4().hex[:8]
    tmp = os.path.join(parent, f".{name}.tmp-{token}")
    try:
        yield tmp
        if not os.path.lexists(tmp):
            raise RuntimeError(f"Nothing was written to the temporary path {tmp}.")
        # Checked again: something may have appeared at `path` while we were writing.
        check_output_path(path, overwrite, kind)
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
