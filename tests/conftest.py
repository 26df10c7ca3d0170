# tests/support/ is on sys.path (pyproject.toml's pythonpath): the shared helpers (golden_support,
# golden_kinds, lazy_comfy_ops, tiny_pipeline, host_prompts...) and the real-ComfyUI harness
# fixtures registered here: comfy_host (session), comfy, comfy_browser, chromium and pack
# (tests/support/comfy_fixtures.py).
pytest_plugins = ["comfy_fixtures"]
