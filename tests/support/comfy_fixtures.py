"""pytest fixtures around the ComfyUI harness (tools/harness/).

Registered from tests/conftest.py with ``pytest_plugins``.

* ``comfy_host`` (session): one real ComfyUI for the whole test session, with this pack
  in ``custom_nodes/`` and an empty ``models/`` (tests add files with ``add_model``).
  Set ``KV_SKIP_COMFY=1`` to skip the tests that need it (never in CI).
* ``comfy`` (function): the same host, checked alive after the test; the server log of
  the test is attached to its report when it fails.
* ``comfy_browser`` (session, parametrised): a :class:`ComfyFrontend` — the real web
  frontend of that host in headless Chromium, once with the frontend that ComfyUI 0.3.75
  pins (``frontend-pinned``, 1.32.9) and once with the current one (``frontend-1.58.1``,
  unpacked by ``ensure_frontend`` and served with ``--front-end-root``: the host restarts in
  the same folder to switch). ``KV_FRONTENDS=pinned`` (or ``=1.58.1``) runs one of them.
  Skipped with the reason when no Chromium is installed, except under CI (``CI`` set),
  where that is a failure.
* ``chromium`` (session): a bare :class:`Browser` for tests of the harness on their own pages.
* ``artifacts`` (session): the folder where tests leave what a person should look at after the
  run (screenshots): ``$KV_ARTIFACTS``, default ``out/test-artifacts/`` in the repository.
* ``pack`` (module): this pack imported in the test process with ComfyUI's modules and no
  server (``tools/harness/inprocess.py``), for tests that call the host glue and nodes
  directly; skipped when there is no ComfyUI checkout.

Every test that uses the server gets the marker ``host``, every one that uses a browser the
marker ``browser`` (``pytest -m host`` runs those, ``-m "not host and not browser"`` the
rest); tests that use the server share one xdist worker.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import os
from pathlib import Path

import pytest

from tools.harness import Browser, BrowserError, ComfyFrontend, ComfyHost, HostError, find_chromium
from tools.harness.inprocess import comfy_modules, comfyui_checkout, import_pack
from tools.harness.install import CURRENT_FRONTEND, FRONTEND_DIST, ensure_frontend

#: The web frontends the browser tests run with: the pinned one (ComfyUI's default) and the current.
FRONTENDS = ("pinned", CURRENT_FRONTEND)

_MARK_KEY = pytest.StashKey[int]()


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


@pytest.fixture(scope="session")
def comfy_host():
    if os.environ.get("KV_SKIP_COMFY") and not _in_ci():
        pytest.skip("KV_SKIP_COMFY is set: the tests that need a real ComfyUI are skipped")
    host = ComfyHost()
    try:
        host.start()
    except HostError as e:
        pytest.fail(f"ComfyUI did not start: {e}", pytrace=False)
    try:
        yield host
    finally:
        host.stop()


@pytest.fixture
def comfy(comfy_host, request):
    if not comfy_host.alive:
        pytest.fail("the session's ComfyUI is no longer running:\n" + comfy_host.log_tail(), pytrace=False)
    request.node.stash[_MARK_KEY] = comfy_host.log_mark()
    yield comfy_host
    if not comfy_host.alive:
        pytest.fail("ComfyUI died during this test:\n" + comfy_host.log_tail(), pytrace=False)


def _require_chromium() -> None:
    if not find_chromium():
        reason = "no Chromium (apt-get install chromium) for the frontend tests"
        if _in_ci():
            pytest.fail(reason + " — CI must run them", pytrace=False)
        pytest.skip(reason)


def _selected_frontends() -> list[str]:
    chosen = [v.strip() for v in os.environ.get("KV_FRONTENDS", "").split(",") if v.strip()]
    unknown = set(chosen) - set(FRONTENDS)
    if unknown:
        raise pytest.UsageError(f"KV_FRONTENDS names {sorted(unknown)}; known: {', '.join(FRONTENDS)}")
    return chosen or list(FRONTENDS)


@contextlib.contextmanager
def _browser_session(failure: str, opener=lambda browser: browser):
    """A started :class:`Browser` (``opener`` applied to it), closed on leaving; a
    :class:`BrowserError` on the way in fails the test with ``failure`` and the error."""
    browser = Browser()
    try:
        browser.start()
        opened = opener(browser)
    except BrowserError as e:
        browser.close()
        pytest.fail(f"{failure}: {e}", pytrace=False)
    try:
        yield opened
    finally:
        browser.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = Path(os.environ.get("KV_ARTIFACTS") or Path(__file__).resolve().parents[2] / "out" / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def chromium():
    _require_chromium()
    with _browser_session("Chromium did not start") as browser:
        yield browser


@pytest.fixture(scope="session", params=FRONTENDS, ids=lambda v: f"frontend-{v}")
def comfy_browser(request, comfy_host):
    if request.param not in _selected_frontends():
        pytest.skip(f"KV_FRONTENDS={os.environ.get('KV_FRONTENDS')} leaves out the {request.param} frontend")
    _require_chromium()
    try:
        root = None if request.param == "pinned" else ensure_frontend(request.param)
    except HostError as e:
        pytest.fail(f"the ComfyUI frontend {request.param} could not be obtained: {e}", pytrace=False)
    if comfy_host.frontend_root != root:
        try:
            comfy_host.restart(frontend_root=root)
        except HostError as e:
            pytest.fail(f"ComfyUI did not restart with the {request.param} frontend: {e}", pytrace=False)
    with _browser_session(f"the ComfyUI frontend ({request.param}) did not open",
                          lambda browser: ComfyFrontend(comfy_host, browser).open()) as frontend:
        # "pinned": the frontend installed with ComfyUI's requirements (the server's default)
        want = request.param
        if request.param == "pinned":
            try:
                want = importlib.metadata.version(FRONTEND_DIST)
            except importlib.metadata.PackageNotFoundError:
                want = None  # $COMFYUI_PATH with its own environment: whatever it serves
        if want and frontend.version != want:
            pytest.fail(f"the page runs frontend {frontend.version}, not the {request.param} one ({want})",
                        pytrace=False)
        yield frontend


@pytest.fixture(scope="module")
def pack():
    comfyui = comfyui_checkout()
    if comfyui is None:
        pytest.skip("no ComfyUI checkout ($COMFYUI_PATH, or the pinned one scripts/test.sh installs)")
    with comfy_modules(comfyui):
        yield import_pack()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the server log written during a failed test that used ``comfy``."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and _MARK_KEY in item.stash:
        host = getattr(item, "funcargs", {}).get("comfy")
        if host is not None:
            report.sections.append(("ComfyUI log of this test", host.log_since(item.stash[_MARK_KEY])[-20000:]))


_HOST_FIXTURES = {"comfy_host", "comfy", "comfy_browser"}
_BROWSER_FIXTURES = {"comfy_browser", "chromium"}


def pytest_collection_modifyitems(config, items):
    """Mark the tests that use the ComfyUI server ``host`` and those that use a browser
    ``browser``, from the fixtures they use. Under ``pytest -n N --dist loadgroup`` keep
    every test that uses the server on one worker, so the session starts one ComfyUI, not
    one per worker."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if _HOST_FIXTURES & used:
            item.add_marker(pytest.mark.host)
            item.add_marker(pytest.mark.xdist_group("comfyui"))
        if _BROWSER_FIXTURES & used:
            item.add_marker(pytest.mark.browser)
