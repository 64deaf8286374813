"""The lab's image builder lives in e2e/images/imagelab and the suite gate in e2e/junit_gate.py,
outside the cri_py package."""

import sys
from pathlib import Path

E2E_DIR = Path(__file__).resolve().parents[3] / "e2e"
for directory in (E2E_DIR / "images", E2E_DIR):
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
