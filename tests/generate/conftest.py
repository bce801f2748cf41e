"""Makes `gen_helpers` importable for the generation tests."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
