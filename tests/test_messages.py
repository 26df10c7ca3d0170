"""Messages that point at what exists: every command a message or a user-facing doc tells a
user to run exists in the registry archive; nothing in the repository unpickles without
``weights_only``."""
from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from kv_core import checkpoints as ck
from unet_files import tiny_release

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return tiny_release(tmp_path_factory)


# --------------------------------------------------------------------------- what a user has

# what the registry archive ships: the top-level entries .comfyignore takes back
# (tests/test_packaging.py checks that file against `comfy node pack`)
PACKED_TOP_LEVEL = {line[2:].rstrip("/") for line in (REPO / ".comfyignore").read_text().splitlines()
                    if line.startswith("!/")}
# sections for developers, who have a clone (README's "... (for developers)", a docs page's
# "... (in a clone of the repository)"); every other section of a packed document is a user's
DEVELOPER_SECTION = re.compile(r"\((?:for developers|in a clone of the repository)\)\s*$")
COMMAND = re.compile(r"(?:^|[\s`(;&|])(?:\S*python(?:3(?:\.\d+)?)?|bash|sh)\s+(-m\s+[\w.]+|[\w./-]+\.(?:py|sh))")
# in a message, a path of the repository's developer folders is an instruction too
PATH = re.compile(r"(?<![\w/.-])((?:tools|bench|scripts|tests|\.ci)/[\w./-]*\w)")


def _packed_files() -> set[str]:
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    return {f for f in out.decode().split("\0") if f and f.split("/", 1)[0] in PACKED_TOP_LEVEL}


def _exists(target: str, packed: set[str]) -> bool:
    if target.startswith("-m"):
        module = target.split()[-1].replace(".", "/")
        return f"{module}.py" in packed or f"{module}/__main__.py" in packed
    return target.lstrip("./") in packed


def _messages(path: Path) -> list[str]:
    """The string constants of a module that are not docstrings (messages, help texts)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def _told_to_run(text: str, paths: bool = True) -> list[str]:
    """Scripts and modules ``text`` tells to run: ``python X.py`` / ``python -m M`` /
    ``bash X.sh``, and with ``paths`` every path into the developer folders."""
    return [m.group(1) for m in COMMAND.finditer(text)] + (PATH.findall(text) if paths else [])


def _user_docs(packed: set[str]) -> dict[str, str]:
    """The user's sections of every packed Markdown document (README.md and its translations,
    docs/*.md), by document."""
    docs = {}
    for f in sorted(p for p in packed if p.endswith(".md") and ("/" not in p or p.startswith("docs/"))):
        parts = re.split(r"^#+ ", (REPO / f).read_text(encoding="utf-8"), flags=re.M)
        docs[f] = "\n".join(p for p in parts if not DEVELOPER_SECTION.search(p.split("\n", 1)[0]))
    return docs


def test_the_user_docs_are_found_and_the_developer_sections_left_out():
    docs = _user_docs(_packed_files())
    assert {"README.md", "README_ru.md", "README_zh.md", "docs/troubleshooting.md"} <= set(docs)
    assert "## Install" in (REPO / "README.md").read_text() and "Install\n" in docs["README.md"]
    assert "python -m kv_core.convert" in docs["docs/troubleshooting.md"]
    # the developers' quick start tells to run the (unpacked) tools; the users' text does not
    assert "-m tools.quickstart" in (REPO / "README.md").read_text()
    assert "-m tools.quickstart" not in docs["README.md"]
    assert "gpu_check.sh" in (REPO / "docs" / "memory-and-speed.md").read_text()
    assert "bash bench/gpu_check.sh" not in docs["docs/memory-and-speed.md"]


def test_every_command_a_message_or_user_doc_names_is_in_the_registry_archive():
    packed = _packed_files()
    told = {}
    for f in sorted(packed):
        if f.endswith(".py"):
            for text in _messages(REPO / f):
                for target in _told_to_run(text):
                    told.setdefault(target, f)
        elif f.endswith((".js", ".json")) and not f.startswith("workflows/"):
            for target in _told_to_run((REPO / f).read_text()):
                told.setdefault(target, f)
    for doc, text in _user_docs(packed).items():
        for target in _told_to_run(text, paths=False):  # the docs may cite tests and benches
            told.setdefault(target, f"{doc} (user sections)")
    missing = {t: where for t, where in told.items() if not _exists(t, packed)}
    assert missing == {}, f"commands or paths users are told about that the registry archive lacks: {missing}"
    assert "-m kv_core.convert" in told  # the checker sees the commands it should


def test_the_command_check_sees_what_is_not_packed():
    assert _told_to_run("convert it with tools/kv_convert.py t5, or `python bench/x.py --y`") == \
        ["bench/x.py", "tools/kv_convert.py", "bench/x.py"]
    assert _told_to_run("run: cd /a && python -m kv_core.convert t5 A B") == ["-m kv_core.convert"]
    assert not _exists("tools/kv_convert.py", _packed_files())
    assert _exists("-m kv_core.convert", _packed_files())


def test_the_bare_t5_message_names_the_packed_converter(tmp_path, release):
    from kv_core.convert import convert_t5_encoder

    out = convert_t5_encoder(release.t5_folder, tmp_path / "enc.safetensors", dtype="fp32")
    meta = ck.open_tensor_file(out).metadata
    bare = tmp_path / "bare" / "enc.safetensors"
    bare.parent.mkdir()
    save_file(load_file(str(out)), str(bare), metadata={k: v for k, v in meta.items() if k != ck.META_TOKENIZER})
    with pytest.raises(ck.CheckpointError) as err:
        ck.load_t5_tokenizer(bare)
    msg = str(err.value)
    assert "tools/" not in msg and f"cd {REPO} && python -m kv_core.convert t5 FLAN_UL2_FOLDER" in msg
    # and that command, with the folder filled in, writes a file whose tokenizer loads
    convert = msg.split(" && ", 1)[1]
    argv = shlex.split(convert.replace("FLAN_UL2_FOLDER", shlex.quote(str(release.t5_folder))))
    done = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert ck.load_t5_tokenizer(Path(argv[-1])) is not None


# --------------------------------------------------------------------------- no unrestricted unpickling

UNPICKLERS = {("torch", "load"), ("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"),
              ("dill", "load"), ("dill", "loads"), ("joblib", "load"), ("cloudpickle", "load"),
              ("cloudpickle", "loads"), ("marshal", "loads"), ("shelve", "open"), ("pandas", "read_pickle")}


def _unrestricted(tree: ast.AST) -> list[str]:
    """Calls that unpickle without restriction: torch.load without ``weights_only=True``,
    pickle (and relatives) loading, numpy.load with ``allow_pickle=True``."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname or a.name: a.name for a in node.names})
        elif isinstance(node, ast.ImportFrom) and node.module:
            aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            owner, name = aliases.get(f.value.id, f.value.id).split(".")[-1], f.attr
        elif isinstance(f, ast.Name) and "." in aliases.get(f.id, ""):
            owner, name = aliases[f.id].split(".")[-2:]
        else:
            continue
        kw = {k.arg: k.value for k in node.keywords}
        if (owner, name) == ("torch", "load"):
            if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                found.append(f"line {node.lineno}: torch.load without weights_only=True")
        elif (owner, name) in UNPICKLERS:
            found.append(f"line {node.lineno}: {owner}.{name}")
        elif (owner, name) == ("numpy", "load") or (owner, name) == ("np", "load"):
            if isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value:
                found.append(f"line {node.lineno}: numpy.load(allow_pickle=True)")
    return found


def _repository_python() -> list[str]:
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "*.py"], capture_output=True, check=True).stdout
    return [f for f in out.decode().split("\0") if f]


def test_nothing_in_the_repository_unpickles_without_restriction():
    bad = {}
    for f in _repository_python():
        found = _unrestricted(ast.parse((REPO / f).read_text(), filename=f))
        if found:
            bad[f] = found
    assert bad == {}


def test_the_unpickling_check_sees_each_form():
    source = ("import torch, pickle\nimport numpy as np\nfrom pickle import loads as l\n"
              "torch.load(p)\ntorch.load(p, weights_only=False)\ntorch.load(p, weights_only=True)\n"
              "pickle.load(f)\nl(b)\nnp.load(p, allow_pickle=True)\nnp.load(p)\n")
    assert _unrestricted(ast.parse(source)) == [
        "line 4: torch.load without weights_only=True", "line 5: torch.load without weights_only=True",
        "line 7: pickle.load", "line 8: pickle.loads", "line 9: numpy.load(allow_pickle=True)"]
