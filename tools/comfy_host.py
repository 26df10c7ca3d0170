"""Command around the real-ComfyUI harness (tools/harness/).

  python -m tools.comfy_host install                 obtain the pinned ComfyUI 0.3.75 (cached in
                                                     .cache/comfyui) and install its requirements;
                                                     unpack the current frontend (1.58.1) that the
                                                     browser tests also use (.cache/frontends)
  python -m tools.comfy_host path                    print the ComfyUI folder in use
  python -m tools.comfy_host check                   start a host with the pack, report its nodes
                                                     and import problems, stop it
  python -m tools.comfy_host serve [--port N]        start a host with the pack and keep it up
                                                     until Ctrl-C (open the printed URL)
  python -m tools.comfy_host convert WF.json         print WF.json (UI format) as an API prompt
  python -m tools.comfy_host run WF.json [--browser] run a workflow (UI or API format) to its end
                                                     and print the result as JSON

``--models FOLDER=PATH`` (repeatable) links a model file or folder into the host's
``models/FOLDER/``; ``--base-dir DIR`` keeps the host's folder (log, outputs) at DIR.
``--frontend VERSION`` serves that ``comfyui-frontend-package`` (e.g. 1.58.1) instead of the
one ComfyUI pins. ``$COMFYUI_PATH`` selects an existing ComfyUI instead of the pinned one.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from tools.harness import (
    Browser, ComfyFrontend, ComfyHost, HostError, ensure_comfyui, is_api_prompt, workflow_to_prompt,
)
from tools.harness.install import ensure_frontend


def _host(args) -> ComfyHost:
    models: dict[str, list[str]] = {}
    for spec in args.models or []:
        folder, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--models wants FOLDER=PATH, got {spec!r}")
        models.setdefault(folder, []).append(path)
    frontend = ensure_frontend(args.frontend) if args.frontend else None
    return ComfyHost(base_dir=args.base_dir, models=models, port=getattr(args, "port", None), frontend_root=frontend)


def cmd_install(args) -> int:
    print(ensure_comfyui())
    print(ensure_frontend())
    return 0


def cmd_path(args) -> int:
    print(ensure_comfyui(install_requirements=False))
    return 0


def cmd_check(args) -> int:
    with _host(args) as host:
        nodes = host.pack_node_types()
        problems = host.pack_import_problems()
        print(f"ComfyUI at {host.comfyui} answered after {host.startup_seconds:.1f} s on {host.url}")
        print(f"{len(nodes)} pack nodes:")
        for node_id, info in sorted(nodes.items()):
            print(f"  {node_id:40s} {info.get('category', '')}")
        for line in problems:
            print("PROBLEM:", line)
        ok = bool(nodes) and not problems
    print("pack loaded" if ok else "pack NOT loaded cleanly")
    return 0 if ok else 1


def _stop_on_sigterm(signum, frame):
    """A SIGTERM (kill, a service manager) stops the server too, as Ctrl-C does."""
    raise KeyboardInterrupt


def cmd_serve(args) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    with _host(args) as host:
        print(f"ComfyUI {host.url} (base {host.base_dir}, log {host.log_path}); Ctrl-C stops it", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


def cmd_convert(args) -> int:
    workflow = json.loads(Path(args.workflow).read_text())
    if is_api_prompt(workflow):
        print(json.dumps(workflow, indent=1))
        return 0
    if args.object_info:
        info = json.loads(Path(args.object_info).read_text())
        print(json.dumps(workflow_to_prompt(workflow, info), indent=1))
        return 0
    with _host(args) as host:
        print(json.dumps(host.to_api(workflow), indent=1))
    return 0


def cmd_run(args) -> int:
    workflow = json.loads(Path(args.workflow).read_text())
    with _host(args) as host:
        if args.browser:
            if is_api_prompt(workflow):
                raise SystemExit("--browser needs a UI-format workflow")
            with Browser() as browser:
                frontend = ComfyFrontend(host, browser).open()
                frontend.load_workflow(workflow)
                missing = frontend.missing_node_types()
                if missing:
                    print(f"missing node types: {missing}", file=sys.stderr)
                    return 1
                result = frontend.queue(timeout=args.timeout)
        else:
            result = host.run(host.to_api(workflow), timeout=args.timeout)
        files = [str(p) for p in host.output_files(result)] if result.ok else []
        print(json.dumps({"status": result.status, "prompt_id": result.prompt_id, "outputs": result.outputs,
                          "files": files, "node_errors": result.node_errors, "error": result.error}, indent=1))
        if not result.ok:
            print(result.describe(), file=sys.stderr)
    return 0 if result.ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="obtain the pinned ComfyUI and its requirements").set_defaults(fn=cmd_install)
    sub.add_parser("path", help="print the ComfyUI folder in use").set_defaults(fn=cmd_path)
    for name, fn, text in (("check", cmd_check, "start, report the pack's nodes, stop"),
                           ("serve", cmd_serve, "start and keep running until Ctrl-C"),
                           ("convert", cmd_convert, "UI-format workflow -> API prompt"),
                           ("run", cmd_run, "run a workflow to its end")):
        p = sub.add_parser(name, help=text)
        p.set_defaults(fn=fn)
        p.add_argument("--models", action="append", metavar="FOLDER=PATH", help="link PATH into models/FOLDER/")
        p.add_argument("--base-dir", help="keep the host's base folder here (default: a temporary one)")
        p.add_argument("--frontend", metavar="VERSION", help="serve this comfyui-frontend-package (e.g. 1.58.1)")
        if name == "serve":
            p.add_argument("--port", type=int, help="port on 127.0.0.1 (default: a free one)")
        if name in ("convert", "run"):
            p.add_argument("workflow", help="workflow JSON file")
        if name == "convert":
            p.add_argument("--object-info", help="convert offline with this saved /object_info JSON")
        if name == "run":
            p.add_argument("--browser", action="store_true", help="load and queue it in the real frontend (Chromium)")
            p.add_argument("--timeout", type=float, default=3600.0, help="seconds before the prompt is interrupted")
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except HostError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
