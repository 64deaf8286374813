"""The lab's image builder lives in e2e/images/imagelab, outside the cri_py package."""

import sys
from pathlib import Path

IMAGES_DIR = Path(__file__).resolve().parents[3] / "e2e" / "images"
if str(IMAGES_DIR) not in sys.path:
    sys.path.insert(0, str(IMAGES_DIR))
