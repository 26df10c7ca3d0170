import os
import sys

# tests/ holds shared helpers (golden_support, golden_kinds, the ComfyUI harness)
sys.path.insert(0, os.path.dirname(__file__))
