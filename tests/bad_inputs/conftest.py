"""Shared checks of the bad-input suite: a snapshot of a folder's files, to assert that a
refused or failed call left everything the user had exactly as it was."""

import hashlib
import pathlib

import pytest


def snapshot(root):
    """`{relative path: sha256}` of every file under `root` (empty if it does not exist)."""
    root = pathlib.Path(root)
    if root.is_file():
        return {root.name: hashlib.sha256(root.read_bytes()).hexdigest()}
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def unchanged():
    """`with unchanged(folder): ...` asserts the body leaves `folder`'s files as they were."""
    import contextlib

    @contextlib.contextmanager
    def check(root):
        before = snapshot(root)
        yield
        assert snapshot(root) == before, f"{root} was changed by a call that should change nothing"

    return check
