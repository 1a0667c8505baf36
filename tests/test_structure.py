"""The package's structure stays within its limits (tools/structure.py)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_modules_functions_and_inner_imports_stay_within_their_limits():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "structure.py")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout
    assert "imports of tfopt modules inside functions (limit 30)" in proc.stdout
