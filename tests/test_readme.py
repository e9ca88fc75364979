"""The README's first two fenced shell blocks are the two commands; .ci/run runs the second."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def shell_blocks():
    return re.findall(r"```sh\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def test_ci_runs_the_readme_test_command():
    blocks = shell_blocks()
    assert len(blocks) >= 2
    test_command = blocks[1].strip()
    assert "pytest" in test_command
    assert test_command.replace("pip install", "pip install -q") in (REPO / ".ci" / "run").read_text()


def test_main_job_command_installs_and_runs_the_built_in_default():
    main_job = shell_blocks()[0].strip()
    assert main_job.startswith("pip install -e .") and "edge-retrieval" in main_job
