"""The README's promises: its Python snippets run as written, and CI runs its test command."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SNIPPETS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
SHELL = re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)


def test_readme_has_snippets_and_the_two_commands():
    assert SNIPPETS, "no python snippet found in README.md"
    assert len(SHELL) >= 2, "README.md must give the install-and-run and the test command"
    assert "pip install" in SHELL[0] and "chanattn run" in SHELL[0]
    assert "pytest" in SHELL[1]


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    install = SHELL[0].strip().split(" && ")
    for part in install[:2]:  # venv creation and the install, exactly as written
        assert part in ci, f".ci/run does not run the README's {part!r}"
    assert SHELL[1].strip() in ci, ".ci/run does not run the README's test command"


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(SNIPPETS[index], f"README.md snippet {index}", "exec"), {})
    if "print(err)" in SNIPPETS[index]:
        assert "divisible by 2 * groups" in capsys.readouterr().out
