"""Text conditioning: tokenization, projection, padding, truncation, unconditional context."""
import pytest
import torch

from kv_core.checkpoints import load_t5_encoder, load_t5_tokenizer, load_text_projections
from kv_core.text import (
    PROJECTION_BASE, PROJECTION_INTERPOLATION, TextEncoder, TextProjection, project_context,
    tokenize, unconditional_context,
)
from kv_core.tiny import TINY_CONTEXT_DIM, TINY_T5_DIM, write_tiny_release


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_tiny_release(tmp_path_factory.mktemp("tiny"), seed=3)


def _projection(d_model=6, dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    proj = TextProjection(d_model, dim)
    with torch.no_grad():
        for p in proj.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return proj


def test_projection_keys_match_t5_projections_layout():
    proj = TextProjection(20, 24)
    assert {k: tuple(v.shape) for k, v in proj.state_dict().items()} == {
        "0.weight": (24, 20), "1.weight": (24,), "1.bias": (24,)}
    assert proj[0].bias is None and proj[1].eps == 1e-5


def test_project_context_zeroes_padding_and_keeps_one_padded_position():
    proj = _projection()
    hidden = torch.randn(3, 10, 6)
    mask = torch.zeros(3, 10, dtype=torch.int64)
    mask[0, :4] = 1
    mask[1, :2] = 1
    mask[2, :6] = 1
    context, cmask = project_context(hidden, mask, proj)
    assert context.shape == (3, 7, 5) and cmask.shape == (3, 7) and cmask.dtype == torch.int64
    full = torch.nn.functional.layer_norm(hidden @ proj[0].weight.T, (5,), proj[1].weight, proj[1].bias)
    keep = mask[:, :7].bool()
    torch.testing.assert_close(context[keep], full[:, :7][keep])
    assert torch.all(context[~keep] == 0)
    assert torch.equal(cmask, mask[:, :7])


def test_project_context_full_row_cuts_nothing():
    proj = _projection()
    hidden = torch.randn(1, 8, 6)
    mask = torch.ones(1, 8, dtype=torch.int64)
    context, cmask = project_context(hidden, mask, proj)
    assert context.shape == (1, 8, 5) and bool(cmask.all())


def test_project_context_accepts_bool_mask_and_returns_int64():
    proj = _projection()
    mask = torch.tensor([[True, True, False, False]])
    context, cmask = project_context(torch.randn(1, 4, 6), mask, proj)
    assert cmask.dtype == torch.int64 and cmask.tolist() == [[1, 1, 0]]


def test_unconditional_context():
    context = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    null = torch.randn(4)
    uc, um = unconditional_context(context, mask, null)
    assert uc.shape == context.shape and um.dtype == mask.dtype
    assert torch.equal(uc[:, 0], null.expand(2, 4))
    assert torch.all(uc[:, 1:] == 0)
    assert um.tolist() == [[1, 0, 0, 0, 0]] * 2


def test_tokenizer_pads_truncates_and_ends_with_eos(release):
    tok = load_t5_tokenizer(release.t5_folder)
    ids, mask = tokenize(tok, ["a cat", "a red car driving along a coastal road at sunset " * 4], 12)
    assert ids.shape == mask.shape == (2, 12) and ids.dtype == mask.dtype == torch.int64
    n = int(mask[0].sum())
    assert 1 < n < 12
    assert ids[0, n - 1] == tok.eos_token_id
    assert torch.all(ids[0, n:] == tok.pad_token_id) and torch.all(mask[0, n:] == 0)
    assert bool(mask[1].all()) and ids[1, -1] == tok.eos_token_id
    # same ids as the tokenizer gives without padding
    assert ids[0, :n].tolist() == tok("a cat")["input_ids"]


def test_text_encoder_matches_its_parts(release):
    te = TextEncoder.from_files(release.t5_folder, release.t5_projections, tokens_length=32)
    prompts = ["a cat sleeping on a sofa", "fireworks"]
    out = te.encode(prompts)
    assert set(out) == {PROJECTION_BASE, PROJECTION_INTERPOLATION}

    ids, mask = tokenize(load_t5_tokenizer(release.t5_folder), prompts, 32)
    encoder = load_t5_encoder(release.t5_folder)
    with torch.no_grad():
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    assert hidden.shape == (2, 32, TINY_T5_DIM)
    projections = load_text_projections(release.t5_projections)
    for label in out:
        want_c, want_m = project_context(hidden, mask, projections[label])
        context, cmask = out[label]
        assert context.shape[-1] == TINY_CONTEXT_DIM
        assert context.shape[1] == int(mask.sum(-1).max()) + 1
        torch.testing.assert_close(context, want_c)
        assert torch.equal(cmask, want_m)
    # the two projections differ, and padding is zero in both
    assert not torch.allclose(out[PROJECTION_BASE][0], out[PROJECTION_INTERPOLATION][0])
    assert torch.all(out[PROJECTION_BASE][0][1][out[PROJECTION_BASE][1][1] == 0] == 0)


def test_text_encoder_prompt_batch_is_rowwise_independent(release):
    te = TextEncoder.from_files(release.t5_folder, release.t5_projections, tokens_length=32)
    both = te.encode(["a dog running", "snow falling on a small wooden house"], labels=(PROJECTION_BASE,))
    one = te.encode("a dog running", labels=(PROJECTION_BASE,))
    c1, m1 = one[PROJECTION_BASE]
    cb, mb = both[PROJECTION_BASE]
    torch.testing.assert_close(cb[0, : c1.shape[1]], c1[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(mb[0, : m1.shape[1]], m1[0])


def test_unknown_projection_label(release):
    te = TextEncoder.from_files(release.t5_folder, release.t5_projections, tokens_length=32)
    with pytest.raises(KeyError):
        te.encode("a cat", labels=("projection_other",))


def test_project_context_casts_hidden_states_to_the_projection_dtype():
    proj = _projection().to(torch.float64)
    hidden = torch.randn(1, 4, 6)
    context, _ = project_context(hidden, torch.tensor([[1, 1, 0, 0]]), proj)
    assert context.dtype == torch.float64
    want, _ = project_context(hidden.double(), torch.tensor([[1, 1, 0, 0]]), proj)
    assert torch.equal(context, want)
