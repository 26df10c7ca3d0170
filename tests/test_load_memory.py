"""Host memory of loading and converting: a checkpoint is never held twice.

Measured per file mapping in this process (``/proc/self/smaps``: the resident pages of the
mappings of one file), which other processes on the machine cannot disturb: the kernel may
only make it smaller. Loading without a cast must keep the weights in the file's mapping
(no copy at all); loading with a cast (and converting) must not keep the file's pages
resident beside the copy.
"""
import sys
from pathlib import Path

import pytest
import torch

from kv_core import checkpoints as ck, convert
from kv_core.models.text_projection import PROJECTION_LABELS, TextProjection

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not Path("/proc/self/smaps").exists(),
                                reason="needs Linux /proc/self/smaps")

WIDTH = 1024  # 4 MiB fp32 matrices: many whole pages per tensor


def _mapped(path) -> list[tuple[int, int, int]]:
    """(start, end, resident bytes) of every mapping of ``path`` in this process."""
    real = str(Path(path).resolve())
    out, current = [], None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split(maxsplit=5)
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                current = None
                if len(head) == 6 and head[5].strip() == real:
                    start, end = (int(v, 16) for v in head[0].split("-"))
                    current = [start, end, 0]
                    out.append(current)
            elif current is not None and line.startswith("Rss:"):
                current[2] = int(line.split()[1]) * 1024
    return [tuple(m) for m in out]


def _resident(path) -> int:
    return sum(rss for _, _, rss in _mapped(path))


@pytest.fixture()
def projections(tmp_path):
    """An official-format ``t5_projections.pt`` (fp32) of two 1024-wide projections (8 MiB)."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for label in PROJECTION_LABELS:
        proj = TextProjection(WIDTH, WIDTH)
        with torch.no_grad():
            for p in proj.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        state[label] = proj.state_dict()
    path = tmp_path / "t5_projections.pt"
    torch.save(state, path)
    return path, state


def _weights_bytes(path) -> int:
    return Path(path).stat().st_size


def _resident_after_each_assign(monkeypatch, path) -> list[int]:
    """Resident bytes of ``path``'s mappings right after each ``assign_state_dict`` (while
    the loader still holds the file open)."""
    seen = []
    original = ck.networks.assign_state_dict

    def spy(module, tensors, get, **kw):
        out = original(module, tensors, get, **kw)
        seen.append(_resident(path))
        return out

    monkeypatch.setattr(ck.networks, "assign_state_dict", spy)
    return seen


def test_cast_load_releases_pages_while_the_file_is_open(projections, monkeypatch):
    """During the load (the file's mapping alive), the pages of every copied tensor are given
    back: at most the boundary pages of each tensor stay resident (fails when every cast
    tensor keeps its file pages: ~the whole 8 MiB beside the copy)."""
    path, state = projections
    seen = _resident_after_each_assign(monkeypatch, path)
    loaded = ck.load_text_projections(path, dtype=torch.bfloat16)
    assert len(seen) == 2
    assert max(seen) < 0.05 * _weights_bytes(path), seen
    for label in PROJECTION_LABELS:  # values: the bf16 cast of the file
        torch.testing.assert_close(loaded[label][0].weight, state[label]["0.weight"].to(torch.bfloat16),
                                   rtol=0, atol=0)


def test_aligned_copies_of_a_safetensors_file_do_not_keep_it_resident(projections, monkeypatch, tmp_path):
    """Our safetensors store tensors at any byte offset; the loader copies misaligned ones
    (formats.aligned) and must then give their file pages back."""
    path, state = projections
    out = convert.convert_text_projections(path, tmp_path / "p.safetensors", dtype="fp32")
    seen = _resident_after_each_assign(monkeypatch, out)
    loaded = ck.load_text_projections(out)
    tf = ck.open_tensor_file(out)
    misaligned = [k for k in tf.keys() if tf.get(k).data_ptr() % 64]
    if not misaligned:
        pytest.skip("this safetensors header happens to align every tensor")
    assert max(seen) < 0.05 * _weights_bytes(out), seen
    torch.testing.assert_close(loaded[PROJECTION_LABELS[0]][0].weight, state[PROJECTION_LABELS[0]]["0.weight"],
                               rtol=0, atol=0)


def test_load_without_cast_keeps_the_weights_in_the_file_mapping(projections):
    """No copy at all when the dtype stays: every matrix is a view of the mapped file."""
    path, state = projections
    loaded = ck.load_text_projections(path)
    maps = _mapped(path)
    assert maps
    for label in PROJECTION_LABELS:
        weight = loaded[label][0].weight
        assert weight.dtype == torch.float32
        ptr = weight.data_ptr()
        assert any(a <= ptr < b for a, b, _ in maps), "the weight was copied out of the file"
        torch.testing.assert_close(weight, state[label]["0.weight"], rtol=0, atol=0)


def test_released_tensor_still_reads_the_file(projections):
    path, state = projections
    tf = ck.open_tensor_file(path)
    key = f"{PROJECTION_LABELS[0]}.0.weight"
    t = tf.get(key)
    before = t.clone()
    tf.release(t)
    torch.testing.assert_close(t, before, rtol=0, atol=0)  # re-read from the file


def test_release_ignores_memory_outside_the_file(projections):
    """Anonymous memory (a tensor not read from the file) is never touched."""
    path, _ = projections
    tf = ck.open_tensor_file(path)
    other = torch.arange(4 * 2**20, dtype=torch.float32)
    tf.release(other)
    assert torch.equal(other, torch.arange(4 * 2**20, dtype=torch.float32))


def test_converter_does_not_keep_the_source_resident(projections, monkeypatch, tmp_path):
    """While the converter writes (its source file open), the source pages it has written
    are given back (fails when every tensor read stays resident)."""
    path, state = projections
    seen = []
    original = convert.write_safetensors

    def spy(dst, entries, metadata):
        out = original(dst, entries, metadata)
        seen.append(_resident(path))
        return out

    monkeypatch.setattr(convert, "write_safetensors", spy)
    out = convert.convert_text_projections(path, tmp_path / "p.safetensors", dtype="bf16")
    assert seen and max(seen) < 0.05 * _weights_bytes(path), seen
    loaded = ck.load_text_projections(out)
    torch.testing.assert_close(loaded[PROJECTION_LABELS[1]][0].weight,
                               state[PROJECTION_LABELS[1]]["0.weight"].to(torch.bfloat16), rtol=0, atol=0)


def test_bench_writer_makes_files_torch_load_reads(tmp_path):
    """bench/bench_load_memory.py writes official-format files tensor by tensor; they must
    read back exactly with torch.load(weights_only=True, mmap=True), as torch.save's do."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_load_memory", Path(__file__).resolve().parents[1] / "bench" / "bench_load_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    layout = {"unet": {"a.weight": (3, 70), "b.norm.weight": (5,)}, "null_embedding": (7,)}
    path = tmp_path / "t2v.pt"
    bench.write_torch_file(path, layout, bench.random_fill(0), torch.float16)
    expected_fill = bench.random_fill(0)
    loaded = torch.load(path, mmap=True, weights_only=True)
    assert torch.equal(loaded["unet"]["a.weight"], expected_fill("unet.a.weight", (3, 70)).half())
    assert torch.equal(loaded["unet"]["b.norm.weight"], expected_fill("unet.b.norm.weight", (5,)).half())
    assert loaded["null_embedding"].shape == (7,) and loaded["null_embedding"].dtype == torch.float16
    assert ck.open_tensor_file(path).shapes == {"unet.a.weight": (3, 70), "unet.b.norm.weight": (5,),
                                                "null_embedding": (7,)}
