"""Save and Load Encoded Prompt: a prompt's conditioning as a file that can be shared and
used without the text encoder (an adapter of ``kv_core.prompt_cache``'s file format:
safetensors, tensors only, the prompts and the token report in its metadata).

Files are written under ComfyUI's output folder (the ``filename_prefix`` may name a
subfolder, never a folder outside) and read from its input folder (or, with ComfyUI's
``[output]`` annotation, from the output folder); a name that leads outside is refused.
"""
from __future__ import annotations

import hashlib
import os

from comfy_api.latest import io, ui

from ..kv_core.prompt_cache import SUFFIX, EncodedPrompt, EncodedPromptError, read_encoded_prompt, write_encoded_prompt
from .host import sockets
from .host.inputs import CATEGORY
from .host.prompt_cache import on_host, report_text
from .host.ui_text import plain


def encoded_prompt_files() -> list[str]:
    """``.safetensors`` files in ComfyUI's input folder and its subfolders (two levels),
    as ``/``-separated names relative to it."""
    import folder_paths

    base = folder_paths.get_input_directory()
    names = []
    for root, dirs, files in os.walk(base, followlinks=True):
        rel = os.path.relpath(root, base)
        depth = 0 if rel == "." else rel.count(os.sep) + 1
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < 2 else []
        names += [os.path.normpath(os.path.join(rel, f)).replace(os.sep, "/")
                  for f in sorted(files) if f.endswith(SUFFIX) and not f.startswith(".")]
    return sorted(names)


def resolve_encoded_prompt(name) -> str:
    """Full path of an encoded-prompt file named in Load Encoded Prompt: relative to the input
    folder, or to the output folder with the ``[output]`` annotation. Raises ``ValueError``
    for a name that leads outside that folder, that is no ``.safetensors`` file or that does
    not exist."""
    import folder_paths

    if not isinstance(name, str) or not name.strip():
        raise ValueError("choose an encoded prompt file (.safetensors in ComfyUI's input folder)")
    rel, base = folder_paths.annotated_filepath(name.strip())
    base = os.path.abspath(base or folder_paths.get_input_directory())
    path = os.path.abspath(os.path.join(base, rel))
    try:
        inside = os.path.commonpath([base, path]) == base and path != base
    except ValueError:  # another drive
        inside = False
    if not inside or os.path.isabs(rel):
        raise ValueError(f"'{name}' is not a file inside ComfyUI's {'output' if 'output' in name else 'input'} "
                         "folder; encoded prompts are read from there only")
    if not path.endswith(SUFFIX):
        raise ValueError(f"'{name}' is not an encoded prompt: those are {SUFFIX} files from Save Encoded Prompt")
    if not os.path.isfile(path):
        raise ValueError(f"'{name}' does not exist in {base}; put the file from Save Encoded Prompt there")
    return path


class KandinskyVideoSaveEncodedPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KandinskyVideoSaveEncodedPrompt",
            display_name="Save Kandinsky Video Encoded Prompt",
            category=f"{CATEGORY}/conditioning",
            description=("Saves the conditioning of Text Encode (the encoded prompt and negative prompt, with the "
                         "token report) as a .safetensors file in the output folder. Load Encoded Prompt uses it "
                         "without the text encoder."),
            inputs=[
                sockets.Conditioning.Input("conditioning", tooltip="From Kandinsky Video Text Encode."),
                io.String.Input("filename_prefix", default="kandinsky_video/prompt",
                                tooltip="File name in ComfyUI's output folder (a subfolder may be named; a "
                                        "counter and .safetensors are added)."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, conditioning, filename_prefix="kandinsky_video/prompt") -> io.NodeOutput:
        import folder_paths

        if isinstance(conditioning, sockets.ConditioningTimeline):
            raise ValueError("Save Encoded Prompt: this conditioning is a long video's prompt timeline (from Extend); "
                             "save the conditioning of each segment's Text Encode instead")
        output_dir = folder_paths.get_output_directory()
        try:
            folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output_dir)
        except Exception:  # ComfyUI refuses a prefix that leads outside the output folder
            raise ValueError(f"Save Encoded Prompt: filename_prefix '{filename_prefix}' leads outside ComfyUI's "
                             "output folder; name a file (or subfolder/file) inside it") from None
        name = f"{filename}_{counter:05}_{SUFFIX}"
        entry = EncodedPrompt(conditioning.text_condition(), conditioning.prompt, conditioning.negative_prompt or None,
                              dict(conditioning.reports), conditioning.identity)
        write_encoded_prompt(os.path.join(folder, name), entry)
        saved = os.path.join(subfolder, name).replace(os.sep, "/")
        shown = plain(f"saved {saved} in the output folder")  # a name the user typed: never markup
        return io.NodeOutput(ui=ui.PreviewText(shown))


class KandinskyVideoLoadEncodedPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KandinskyVideoLoadEncodedPrompt",
            display_name="Load Kandinsky Video Encoded Prompt",
            category=f"{CATEGORY}/conditioning",
            description=("Loads a prompt encoded by Text Encode and saved with Save Encoded Prompt: the same "
                         "conditioning, without the text encoder."),
            inputs=[
                io.Combo.Input("encoded_prompt", options=encoded_prompt_files(),
                               tooltip="A .safetensors file from Save Encoded Prompt, in ComfyUI's input folder."),
            ],
            outputs=[sockets.Conditioning.Output(display_name="conditioning")],
        )

    @classmethod
    def validate_inputs(cls, encoded_prompt=None):
        try:
            resolve_encoded_prompt(encoded_prompt)
        except ValueError as err:
            return str(err)
        return True

    @classmethod
    def fingerprint_inputs(cls, encoded_prompt=None):
        try:
            with open(resolve_encoded_prompt(encoded_prompt), "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()
        except (OSError, ValueError):
            return float("nan")  # never equal: the node runs and reports the problem

    @classmethod
    def execute(cls, encoded_prompt) -> io.NodeOutput:
        path = resolve_encoded_prompt(encoded_prompt)
        try:
            entry, _ = read_encoded_prompt(path)
        except EncodedPromptError as err:
            raise ValueError(f"Load Encoded Prompt: {err}") from None
        conditioning = sockets.TextConditioning(entry.prompt, entry.negative_prompt or "", on_host(entry.condition),
                                                reports=dict(entry.reports), identity=entry.identity)
        shown = plain(report_text(entry.reports) if entry.reports else f"prompt: {entry.prompt!r}")
        return io.NodeOutput(conditioning, ui=ui.PreviewText(shown))


NODES = [KandinskyVideoSaveEncodedPrompt, KandinskyVideoLoadEncodedPrompt]
