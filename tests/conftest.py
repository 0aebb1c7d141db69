"""Shared pytest setup for all test packages."""

import sys
from pathlib import Path

# Test helper modules (e.g. tests/packer/image_cases.py) are imported by plain name from
# any test directory; there are no __init__.py files, so put their folder on sys.path.
sys.path.insert(0, str(Path(__file__).parent / "packer"))
