"""The user documentation's promises: every Python block in README.md and docs/*.md runs as
written, its links resolve, and CI runs the README's two commands."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README = DOCS[0].read_text()
SHELL = re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)
# A fenced ```python block, with the line before it: `<!-- slow -->` there marks a block
# that takes more than a few seconds (exported ResNets, longer training).
PYTHON = re.compile(r"(?:^([^\n]*)\n)?```python\n(.*?)```", flags=re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def python_blocks():
    for path in DOCS:
        for index, match in enumerate(PYTHON.finditer(path.read_text())):
            marks = [pytest.mark.slow] if "<!-- slow -->" in (match.group(1) or "") else []
            name = f"{path.relative_to(ROOT)}[{index}]"
            yield pytest.param(name, match.group(2), id=name, marks=marks)


BLOCKS = list(python_blocks())


def test_readme_has_snippets_and_the_two_commands():
    assert any(b.values[0].startswith("README.md") for b in BLOCKS), "no python block in README"
    assert len(SHELL) >= 2, "README.md must give the install-and-run and the test command"
    assert "pip install" in SHELL[0] and "chanattn run" in SHELL[0]
    assert "pytest" in SHELL[1]
    # The lines a newcomer's tool greps for (`grep -m1 -E '^[^#`]*pip install.*chanattn run'`
    # and `grep -m1 -E '^[^#`]*-m pytest'`) are the two commands.
    lines = README.splitlines()
    install = next(line for line in lines if re.match(r"^[^#`]*pip install.*chanattn run", line))
    test = next(line for line in lines if re.match(r"^[^#`]*-m pytest", line))
    assert install == SHELL[0].strip() and test == SHELL[1].strip()


def test_readme_is_short():
    assert len(README.splitlines()) <= 200, (
        "README.md is for deciding and starting: details go to docs/"
    )


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    install = SHELL[0].strip().split(" && ")
    for part in install[:2]:  # venv creation and the install, exactly as written
        assert part in ci, f".ci/run does not run the README's {part!r}"
    assert SHELL[1].strip() in ci, ".ci/run does not run the README's test command"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve_inside_the_repository(path):
    for target in LINK.findall(path.read_text()):
        if "://" in target:
            continue
        resolved = (path.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), f"{path.name} links outside the repository: {target}"
        assert resolved.exists(), f"{path.name} links to a missing file: {target}"


@pytest.mark.parametrize(("name", "code"), BLOCKS)
def test_python_block_runs(name, code, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, name, "exec"), {"__name__": "__main__"})
    if "print(err)" in code:
        assert "divisible by 2 * groups" in capsys.readouterr().out
