"""The README's `cinfer --help` section shows what the binary prints."""
import subprocess

import pytest

from conftest import REPO_ROOT, CINFER_BIN

README = (REPO_ROOT / "README.md").read_text()


@pytest.mark.parametrize("cmd", [[], ["tokenize"], ["run"], ["template"], ["bench"], ["serve"], ["health"]])
def test_readme_shows_each_help(cmd):
    out = subprocess.run([str(CINFER_BIN), *cmd, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert "```\n" + out.stdout + "```" in README, f"README lacks the help of cinfer {' '.join(cmd)}"
