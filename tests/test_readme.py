"""The README's commands run as written, in order, as a new user would type them.

`.ci/run` runs the two quick-start commands (install + demo, install tests + this suite), as the
README writes them (a test holds the two equal); this test runs every later ```bash block, in a scratch copy of the repository whose `.venv` is the one the
quick start made. A command that fails, or a README whose commands drift from the code, fails it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
VENV = ROOT / ".venv"
LABEL_STUDIO_VENV = ROOT / ".venv-label-studio"


def bash_blocks(text: str) -> list[tuple[str, str]]:
    """``(section title, block)`` for each ```bash block, in order."""
    found, section = [], ""
    for part in re.split(r"(```bash\n.*?```)", text, flags=re.S):
        if part.startswith("```bash"):
            found.append((section, part[len("```bash\n"):-3].strip()))
        else:
            titles = re.findall(r"^#+ (.+)$", part, flags=re.M)
            section = titles[-1] if titles else section
    return found


def test_readme_keeps_its_bash_blocks_in_the_guide():
    sections = [section for section, _ in bash_blocks(README.read_text(encoding="utf-8"))]
    assert sections[:2] == ["Quick start", "Quick start"], sections
    assert "Running a job" in sections


def test_ci_runs_the_quick_start_as_the_readme_writes_it():
    """`.ci/run` calls the README's two quick-start commands, word for word, and nothing else
    after making a fresh .venv."""
    quick_start = [block for section, block in bash_blocks(README.read_text(encoding="utf-8"))
                   if section == "Quick start"]
    commands = [" ".join(line for line in block.splitlines() if not line.startswith("#"))
                for block in quick_start]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    steps = ci[ci.index("rm -rf .venv") + 1:]
    assert [line for line in steps if line.strip()] == commands
    assert any("pytest" in command for command in commands)


@pytest.mark.skipif(not (VENV / "bin" / "alray").exists(),
                    reason="the README's commands use .venv/bin/alray, which the quick start "
                           "installs; run the quick start first (CI does)")
def test_readme_commands_run_as_written(tmp_path):
    blocks = bash_blocks(README.read_text(encoding="utf-8"))[2:]  # after the quick start
    assert blocks, "the README has no job-guide commands"
    checkout = tmp_path / "alray"
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(
        ".venv*", ".git", "jobs/example", "alray-demo", "benchmarks", "__pycache__", ".*cache*"))
    shutil.rmtree(checkout / "jobs" / "example", ignore_errors=True)
    (checkout / ".venv").symlink_to(VENV)
    if LABEL_STUDIO_VENV.exists():  # the full round's Label Studio (.ci/run installs it)
        (checkout / LABEL_STUDIO_VENV.name).symlink_to(LABEL_STUDIO_VENV)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "VIRTUAL_ENV"))}
    for section, block in blocks:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=checkout, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (f"README section {section!r}:\n{block}\nexit "
                                      f"{done.returncode}\n{done.stdout[-2000:]}\n"
                                      f"{done.stderr[-3000:]}")
    assert (checkout / "jobs" / "example" / "out" / "selection.parquet").exists()
