import os
import sys

# tests/ holds shared helpers (golden_support, golden_kinds, the ComfyUI harness)
sys.path.insert(0, os.path.dirname(__file__))

# the real-ComfyUI harness: fixtures comfy_host (session), comfy, comfy_browser
pytest_plugins = ["comfy_fixtures"]
