"""scripts/setup.sh says what it installs, step by step, instead of printing nothing for minutes.

The script runs for real (bash, its own control flow) in a copy of the repository layout, with
apt-get, sudo, PostgreSQL's tools and Python replaced by stubs on PATH that record their calls and
print what pip prints, so that nothing is installed on the test machine.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAKE_PIP = """#!/bin/sh
echo "pip $*" >> "$CALLS"
echo "Obtaining file:///repo"
echo "Collecting torch==2.14.1"
echo "  Downloading torch-2.14.1-cp311-none-linux_x86_64.whl (180.2 MB)"
echo "Requirement already satisfied: numpy in ./.venv/lib/python3.11/site-packages"
echo "Installing collected packages: torch"
echo "Successfully installed torch-2.14.1"
"""

FAKE_PYTHON = """#!/bin/sh
echo "python $*" >> "$CALLS"
mkdir -p .venv/bin
cp "$STUBS/fake-pip" .venv/bin/pip
printf '#!/bin/sh\\nexit 0\\n' > .venv/bin/python
chmod +x .venv/bin/pip .venv/bin/python
"""


def _stub(folder: Path, name: str, text: str) -> None:
    path = folder / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def test_setup_says_what_it_installs_step_by_step(tmp_path):
    repo, stubs = tmp_path / "repo", tmp_path / "stubs"
    (repo / "scripts").mkdir(parents=True)
    stubs.mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", repo / "scripts" / "setup.sh")
    shutil.copy(ROOT / "constraints.txt", repo / "constraints.txt")
    calls = tmp_path / "calls"
    for tool in ("apt-get", "pg_ctlcluster", "chromium"):
        _stub(stubs, tool, f'#!/bin/sh\necho "{tool} $*" >> "$CALLS"\n')
    _stub(stubs, "sudo", '#!/bin/sh\nexec "$@"\n')
    _stub(stubs, "pg_isready", "#!/bin/sh\nexit 0\n")  # a server already answers
    _stub(stubs, "fake-pip", FAKE_PIP)
    _stub(stubs, "fake-python", FAKE_PYTHON)
    env = {**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "CALLS": str(calls),
           "STUBS": str(stubs), "PYTHON": str(stubs / "fake-python")}
    proc = subprocess.run(["bash", str(repo / "scripts" / "setup.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    steps = [line for line in out.splitlines() if line.startswith("setup [")]
    assert [s[:12] for s in steps] == ["setup [1/4]:", "setup [2/4]:", "setup [3/4]:", "setup [4/4]:"], out
    assert "PyTorch" in steps[2] and "torch==2.14.1" in steps[2] and "several minutes" in steps[2]
    assert "MNIST" in steps[3]
    # pip's progress shows (one line per package), its noise does not.
    assert "    Collecting torch==2.14.1" in out and "    Successfully installed torch-2.14.1" in out
    assert "Downloading" not in out and "Requirement already satisfied" not in out
    assert out.index("setup [3/4]") < out.index("Collecting torch") < out.index("setup [4/4]")
    assert "creating the virtual environment .venv" in out
    assert "python -m venv .venv" in calls.read_text()
