"""The README's Python quickstart runs as written (on a private port/runtime dir)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from helpers import ROOT, server_env

pytestmark = pytest.mark.timeout(120)


def quickstart_code() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart (Python)", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_quickstart_runs(runtime_dir, port):
    code = quickstart_code()
    assert "port=7777" in code
    code = code.replace("port=7777", f"port={port}")
    code += f"\nExecutionClient(port={port}).shutdown()\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100, env=server_env())
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] in ("queued", "running")
    assert "done crunching" in lines and "{'_': 190}" in lines and lines[-1] == "cancelled"


def readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text.split("## Set-up", 1)[1], re.S)
    lines = [ln for block in blocks for ln in block.splitlines() if "pytest" in ln and not ln.startswith("#")]
    assert len(lines) == 1, lines
    return lines[0].strip()


def test_ci_runs_the_readme_test_command():
    """CI runs exactly what the README tells a user to run (plus the chromium system package)."""
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_test_command() in [ln.strip() for ln in ci]
    assert any("apt-get install -y chromium" in ln for ln in ci)
