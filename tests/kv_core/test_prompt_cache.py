"""The prompt-embedding cache (kv_core.prompt_cache): every part of the key misses when it
changes, unusable files are ignored and rewritten, the size limit evicts the least recently
used entries, and the pipeline never loads the text encoder for a cached prompt."""
from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from dataclasses import replace

import pytest
import torch

from kv_core.pipeline import KandinskyVideoPipeline
from kv_core.prompt_cache import (EncodedPrompt, EncodedPromptError, PromptCache, encode_prompt_cached,
                                  read_encoded_prompt, write_encoded_prompt)
from kv_core.text_identity import CACHE_FORMAT, TextIdentity, content_fingerprint
from kv_core.stages.text import encode_prompt
from kv_core.text import PromptWarning, TextEncoder
from kv_core.tiny import TINY_TOKENS_LENGTH, write_tiny_release

PROMPT, NEGATIVE = "a red car drives along a coastal road", "blurry"


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_tiny_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def text(release):
    return TextEncoder.from_files(release.t5_folder, release.t5_projections, tokens_length=TINY_TOKENS_LENGTH)


def _identity(release, **kw):
    args = dict(tokens_length=TINY_TOKENS_LENGTH, weight_dtype=torch.float32)
    args.update(kw)
    return TextIdentity.of_files(release.t5_folder, release.t5_projections, **args)


class Loads:
    """A load_text_encoder that counts its calls."""

    def __init__(self, text):
        self.text, self.calls = text, 0

    def __call__(self):
        self.calls += 1
        return self.text


def _run(text, cache, identity, prompt=PROMPT, negative=NEGATIVE):
    loads = Loads(text)
    entry, hit = encode_prompt_cached(None, prompt, negative, load_text_encoder=loads, identity=identity,
                                      cache=cache, warn=False)
    assert loads.calls == (0 if hit else 1)
    return entry, hit


# --------------------------------------------------------------------------- hits and misses

def test_second_encoding_is_served_without_the_encoder_and_equal(tmp_path, release, text):
    cache, identity = PromptCache(tmp_path), _identity(release)
    first, hit = _run(text, cache, identity)
    assert not hit and len(cache.entries()) == 1
    second, hit = _run(text, cache, identity)
    assert hit
    want = encode_prompt(text, PROMPT, NEGATIVE, warn=False)
    for name in ("context", "context_mask", "negative_context", "negative_mask"):
        got = getattr(second.condition, name)
        assert torch.equal(got, getattr(want, name).cpu()) and got.dtype == getattr(want, name).dtype, name
    assert second.reports == first.reports == {"prompt": text.report(PROMPT), "negative prompt": text.report(NEGATIVE)}
    assert second.identity == identity and second.prompt == PROMPT and second.negative_prompt == NEGATIVE


def test_blank_negative_prompt_is_the_same_entry_as_none(tmp_path, release, text):
    cache, identity = PromptCache(tmp_path), _identity(release)
    _run(text, cache, identity, negative=None)
    entry, hit = _run(text, cache, identity, negative="   ")
    assert hit and entry.condition.negative_context is None and list(entry.reports) == ["prompt"]


@pytest.mark.parametrize("change", ["prompt", "negative_prompt", "no_negative_prompt"])
def test_each_prompt_change_misses(tmp_path, release, text, change):
    cache, identity = PromptCache(tmp_path), _identity(release)
    _run(text, cache, identity)
    prompt, negative = PROMPT, NEGATIVE
    if change == "prompt":
        prompt = PROMPT + "!"
    elif change == "negative_prompt":
        negative = "grainy"
    else:
        negative = ""
    entry, hit = _run(text, cache, identity, prompt, negative)
    assert not hit and len(cache.entries()) == 2
    assert torch.equal(entry.condition.context.cpu(), encode_prompt(text, prompt, negative, warn=False).context)


@pytest.mark.parametrize("field,value", [
    ("tokens_length", TINY_TOKENS_LENGTH // 2), ("weight_dtype", torch.bfloat16),
    ("compute_dtype", torch.bfloat16), ("projection_dtype", torch.bfloat16), ("context_dim", 24)])
def test_each_setting_of_the_key_misses(tmp_path, release, text, field, value):
    cache, identity = PromptCache(tmp_path), _identity(release)
    _run(text, cache, identity)
    other = _identity(release, **{field: value})
    assert other != identity and other.key(PROMPT, NEGATIVE) != identity.key(PROMPT, NEGATIVE)
    _, hit = _run(text, cache, other)
    assert not hit
    _, hit = _run(text, cache, identity)  # the first entry is still there
    assert hit


def _copy_release_part(release, tmp_path, part):
    src = getattr(release, part)
    dst = tmp_path / ("copy_" + src.name)
    (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return src, dst


@pytest.mark.parametrize("part", ["t5_folder", "t5_projections"])
def test_the_parts_are_known_by_content_not_by_name(tmp_path, release, text, part):
    """A renamed copy hits; the same name with another content misses."""
    cache, identity = PromptCache(tmp_path / "cache"), _identity(release)
    _run(text, cache, identity)
    src, dst = _copy_release_part(release, tmp_path, part)
    paths = {"t5_folder": release.t5_folder, "t5_projections": release.t5_projections, part: dst}
    copy = TextIdentity.of_files(paths["t5_folder"], paths["t5_projections"], tokens_length=TINY_TOKENS_LENGTH,
                                 weight_dtype=torch.float32)
    assert copy == identity
    _, hit = _run(text, cache, copy)
    assert hit
    # another content under the copy's name: one weight changed
    if part == "t5_folder":
        from safetensors.torch import load_file, save_file

        weights = dst / "model.safetensors"
        tensors = load_file(str(weights))
        name = next(k for k in tensors if k.startswith("encoder.block.0"))
        tensors[name] = tensors[name] + 1e-3
        save_file(tensors, str(weights), metadata={"format": "pt"})
    else:
        projections = torch.load(dst, weights_only=True)
        projections["projection_base"]["1.bias"] += 1e-3
        torch.save(projections, dst)
    changed = TextIdentity.of_files(paths["t5_folder"], paths["t5_projections"], tokens_length=TINY_TOKENS_LENGTH,
                                    weight_dtype=torch.float32)
    assert changed != identity
    _, hit = _run(text, cache, changed)
    assert not hit


def test_the_tokenizer_files_are_part_of_the_encoders_identity(tmp_path, release):
    folder = tmp_path / "t5"
    shutil.copytree(release.t5_folder, folder)
    before = content_fingerprint(folder)
    config = folder / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"model_max_length": 512', '"model_max_length": 256'))
    changed = content_fingerprint(folder)
    assert changed != before
    (folder / ".cache").mkdir()  # hidden files (a hub download's bookkeeping) do not count
    (folder / ".cache" / "x").write_text("x")
    assert content_fingerprint(folder) == changed
    (folder / "README.md").write_text("x")  # any other file does
    assert content_fingerprint(folder) != changed


def test_fingerprint_of_a_large_file_sees_the_header_and_the_samples_and_not_the_name(tmp_path):
    from safetensors.torch import save_file

    big = torch.arange(1 << 20, dtype=torch.float32)  # 4 MiB: sampled, not hashed whole
    save_file({"w": big}, str(tmp_path / "a.safetensors"))
    shutil.copy(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    base = content_fingerprint(tmp_path / "a.safetensors")
    assert content_fingerprint(tmp_path / "b.safetensors") == base
    save_file({"w": big.to(torch.float64).float()}, str(tmp_path / "c.safetensors"), metadata={"x": "1"})
    assert content_fingerprint(tmp_path / "c.safetensors") != base  # header (metadata) differs
    last = big.clone()
    last[-1] += 1  # the last sample covers the end of the file
    save_file({"w": last}, str(tmp_path / "d.safetensors"))
    assert content_fingerprint(tmp_path / "d.safetensors") != base
    first = big.clone()
    first[0] += 1
    save_file({"w": first}, str(tmp_path / "e.safetensors"))
    assert content_fingerprint(tmp_path / "e.safetensors") != base
    data = (tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "f.safetensors").write_bytes(data[:-4096])  # truncated
    assert content_fingerprint(tmp_path / "f.safetensors") != base


# --------------------------------------------------------------------------- files

def _entry(text, negative=NEGATIVE):
    cond = encode_prompt(text, PROMPT, negative, warn=False)
    return EncodedPrompt(cond, PROMPT, negative, {"prompt": text.report(PROMPT)}, None)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "other_key", "other_format", "nan"])
def test_an_unusable_cache_file_is_ignored_with_a_warning_and_rewritten(tmp_path, release, text, damage, caplog):
    from safetensors.torch import save_file

    cache, identity = PromptCache(tmp_path), _identity(release)
    first, _ = _run(text, cache, identity)
    path = cache.path(identity.key(PROMPT, NEGATIVE))
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64 + data[64:])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "other_key":
        write_encoded_prompt(path, first, key="0" * 64)
    elif damage == "other_format":
        save_file({"context": first.condition.context.cpu()}, str(path), metadata={"format": "pt"})
    else:
        bad = first.condition.context.clone().cpu()
        bad[0, 0, 0] = float("nan")
        write_encoded_prompt(path, replace(first, condition=replace(first.condition, context=bad)),
                             key=identity.key(PROMPT, NEGATIVE))
    with caplog.at_level(logging.WARNING, logger="kv_core.prompt_cache"):
        entry, hit = _run(text, cache, identity)
    assert not hit
    assert any("ignoring" in r.getMessage() and path.name in r.getMessage() for r in caplog.records), caplog.text
    assert torch.equal(entry.condition.context.cpu(), first.condition.context.cpu())
    again, hit = _run(text, cache, identity)  # rewritten: a hit again
    assert hit and torch.equal(again.condition.context, first.condition.context.cpu())


def test_read_encoded_prompt_names_what_is_wrong(tmp_path, text):
    from safetensors.torch import save_file

    path = tmp_path / "x.safetensors"
    save_file({"context": torch.zeros(1, 2, 3), "context_mask": torch.ones(1, 2, dtype=torch.int64),
               "code": torch.zeros(1)}, str(path), metadata={"format": CACHE_FORMAT})
    with pytest.raises(EncodedPromptError, match="holds the tensors"):
        read_encoded_prompt(path)
    save_file({"context": torch.zeros(1, 2, 3), "context_mask": torch.ones(1, 3, dtype=torch.int64)}, str(path),
              metadata={"format": CACHE_FORMAT})
    with pytest.raises(EncodedPromptError, match="mask"):
        read_encoded_prompt(path)
    write_encoded_prompt(path, _entry(text))
    entry, key = read_encoded_prompt(path)
    assert key == "" and entry.prompt == PROMPT and entry.reports == {"prompt": text.report(PROMPT)}


def test_size_limit_evicts_least_recently_used(tmp_path, release, text):
    identity = _identity(release)
    probe = PromptCache(tmp_path / "probe")
    _run(text, probe, identity, "p0")
    one = probe.size()
    cache = PromptCache(tmp_path / "cache", max_bytes=int(2.5 * one))
    for i in range(2):
        _run(text, cache, identity, f"p{i}")
        time.sleep(0.01)
    _, hit = _run(text, cache, identity, "p0")  # p0 used again: p1 is now the least recent
    assert hit
    time.sleep(0.01)
    _run(text, cache, identity, "p2")
    names = {p.name for p in cache.entries()}
    assert names == {cache.path(identity.key(p, NEGATIVE)).name for p in ("p0", "p2")}
    assert cache.size() <= cache.max_bytes


def test_cache_off_reads_and_writes_nothing(tmp_path, release, text):
    identity = _identity(release)
    on = PromptCache(tmp_path)
    _run(text, on, identity)
    off = PromptCache(tmp_path, enabled=False)
    _, hit = _run(text, off, identity)
    assert not hit
    _run(text, off, identity, "another prompt")
    assert len(on.entries()) == 1


def test_unwritable_cache_folder_is_a_warning_not_an_error(tmp_path, release, text, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = PromptCache(blocker / "cache")
    with caplog.at_level(logging.WARNING, logger="kv_core.prompt_cache"):
        entry, hit = _run(text, cache, _identity(release))
    assert not hit and entry.condition.context.ndim == 3 and "cannot write" in caplog.text


def test_a_hit_warns_about_a_prompt_read_only_in_part_as_a_miss_does(tmp_path, release, text):
    cache, identity = PromptCache(tmp_path), _identity(release)
    long_prompt = " ".join(["a red car drives along a coastal road"] * 20)
    for _ in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            encode_prompt_cached(text, long_prompt, None, identity=identity, cache=cache)
        assert [w.category for w in caught] == [PromptWarning] and "dropped" in str(caught[0].message)


# --------------------------------------------------------------------------- the pipeline

def test_a_fresh_pipeline_does_not_load_the_encoder_for_a_cached_prompt(tmp_path, release, monkeypatch):
    calls = []
    real = TextEncoder.from_files.__func__

    def counting(cls, *a, **kw):
        calls.append(a[0])
        return real(cls, *a, **kw)

    monkeypatch.setattr(TextEncoder, "from_files", classmethod(counting))
    kw = dict(width=64, height=64, num_keyframes=2, fps="low", noise=3, first_frame_steps=2, keyframes_steps=2)
    first = KandinskyVideoPipeline.from_release(release.folder, prompt_cache=tmp_path / "cache")
    assert calls == []  # loaded on first need only
    a = first(PROMPT, negative_prompt=NEGATIVE, **kw)
    assert len(calls) == 1 and first.prompt_cache_hit is False
    fresh = KandinskyVideoPipeline.from_release(release.folder, prompt_cache=tmp_path / "cache")
    b = fresh(PROMPT, negative_prompt=NEGATIVE, **kw)
    assert len(calls) == 1 and fresh.prompt_cache_hit is True and fresh._text_encoder is None
    assert torch.equal(a.frames, b.frames)
    fresh("another prompt", **kw)  # a miss loads it
    assert len(calls) == 2 and fresh.prompt_cache_hit is False
    plain = KandinskyVideoPipeline.from_release(release.folder)  # no cache: encodes every time
    assert torch.equal(plain(PROMPT, negative_prompt=NEGATIVE, **kw).frames, a.frames)


def test_cache_keys_are_hex_and_stay_in_the_folder(tmp_path):
    cache = PromptCache(tmp_path)
    for bad in ("../../etc/passwd", "a" * 63, "A" * 64):
        with pytest.raises(ValueError):
            cache.path(bad)
    assert cache.path("a" * 64).parent == tmp_path
    assert os.path.basename(cache.path("0" * 64)) == "0" * 64 + ".safetensors"
