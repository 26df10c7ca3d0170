# tests/ is on sys.path (pyproject.toml's pythonpath) for the shared helpers: golden_support,
# golden_kinds, lazy_comfy_ops and the real-ComfyUI harness fixtures registered here:
# comfy_host (session), comfy, comfy_browser, chromium and pack (tests/comfy_fixtures.py).
pytest_plugins = ["comfy_fixtures"]
