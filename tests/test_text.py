"""Text conditioning: tokenization, projection, padding, truncation, unconditional context,
and the report of what the encoder cannot read (unknown tokens, other scripts, cut prompts)."""
import warnings

import pytest
import torch

from kv_core.checkpoints import load_t5_encoder, load_t5_tokenizer, load_text_projections
from kv_core.conditioning import null_text
from kv_core.models.text_projection import PROJECTION_BASE, PROJECTION_INTERPOLATION, TextProjection
from kv_core.text import PromptWarning, TextEncoder, project_context, prompt_report, tokenize
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
    uc, um = null_text(context, mask, null)
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


# --- what the encoder cannot read (issue 9 §1) ------------------------------------------------

RUSSIAN = "красная машина едет по прибрежной дороге"        # "a red car drives along a coastal road"


@pytest.fixture(scope="module")
def t5_tokenizer():
    """The real T5 32k SentencePiece tokenizer that ComfyUI ships (Flan-UL2's vocabulary)."""
    from tools.harness import ensure_comfyui

    return load_t5_tokenizer(ensure_comfyui(install_requirements=False) / "comfy" / "text_encoders" / "t5_tokenizer")


def test_real_t5_tokenizer_counts_unknown_pieces_of_a_russian_prompt(t5_tokenizer):
    report = prompt_report(t5_tokenizer, RUSSIAN, 128)
    ids = t5_tokenizer(RUSSIAN)["input_ids"]
    assert report.tokens == report.kept == len(ids) - 1 == 32  # measured: 33 pieces with </s>
    assert report.unknown == ids.count(t5_tokenizer.unk_token_id) == 8
    assert report.dropped == 0 and not report.ok
    assert set(report.unknown_text) <= set(RUSSIAN) and "я" in report.unknown_text
    assert report.scripts == ("CYRILLIC",)
    message = report.message()
    assert "8 of the 32 tokens" in message and "English" in message and "Cyrillic" in message


def test_real_t5_tokenizer_english_prompt_is_fine(t5_tokenizer):
    report = prompt_report(t5_tokenizer, "a red car driving along a coastal road at sunset", 128)
    assert report.ok and report.unknown == report.dropped == 0 and report.problems() == []
    assert report.kept == len(t5_tokenizer("a red car driving along a coastal road at sunset")["input_ids"]) - 1


@pytest.mark.parametrize("prompt,script", [("東京の夜景", "CJK"), ("ένα κόκκινο αυτοκίνητο", "GREEK"),
                                           ("سيارة حمراء", "ARABIC")])
def test_other_scripts_are_reported(t5_tokenizer, prompt, script):
    report = prompt_report(t5_tokenizer, prompt, 128)
    assert not report.ok and script in report.scripts
    assert "English" in report.message()


def test_symbols_outside_the_vocabulary_are_named(t5_tokenizer):
    report = prompt_report(t5_tokenizer, "a red car {cinematic} 🚗", 128)
    assert report.unknown == 3 and set(report.unknown_text) == {"{", "}", "🚗"}


@pytest.mark.parametrize("which", ["real", "tiny"])
def test_long_prompt_reports_dropped_tokens_and_matches_the_cut(which, t5_tokenizer, release):
    tok = t5_tokenizer if which == "real" else load_t5_tokenizer(release.t5_folder)
    length = 128 if which == "real" else 32
    prompt = "a red car driving along a coastal road at sunset, " * 20
    report = prompt_report(tok, prompt, length)
    full = tok(prompt)["input_ids"]
    assert report.tokens == len(full) - 1 and report.kept == length - 1
    assert report.dropped == len(full) - length > 0
    ids, mask = tokenize(tok, prompt, length)
    assert ids[0, :-1].tolist() == full[: length - 1]  # the kept tokens are exactly what the encoder gets
    assert f"{report.dropped} of its {report.tokens} tokens were dropped" in report.message()
    assert report.dropped_text and prompt.rstrip(", ").endswith(report.dropped_text.rstrip(", ")[-20:])
    exact = prompt_report(tok, "a red car", length)
    assert exact.dropped == 0 and exact.ok


def test_tiny_tokenizer_cannot_tell_two_russian_prompts_apart_and_says_so(release):
    """The issue's example: two different Russian prompts get identical ids (so identical
    videos); both are reported."""
    tok = load_t5_tokenizer(release.t5_folder)
    ids_a = tok(RUSSIAN)["input_ids"]
    ids_b = tok("белая лодка плывёт по тихому озеру")["input_ids"]
    assert ids_a == ids_b  # the tokenizer cannot tell them apart
    for prompt in (RUSSIAN, "белая лодка плывёт по тихому озеру"):
        report = prompt_report(tok, prompt, 32)
        # six words, each one <unk> after a word-boundary piece
        assert (report.kept, report.unknown) == (len(ids_a) - 1, ids_a.count(tok.unk_token_id)) == (12, 6)
        assert not report.ok and "6 of the 12 tokens read are unknown" in report.message()


def test_text_encoder_warns_but_encodes(release):
    te = TextEncoder.from_files(release.t5_folder, release.t5_projections, tokens_length=32)
    with pytest.warns(PromptWarning, match=r"6 of the 12 tokens read are unknown.*English"):
        out = te.encode(RUSSIAN, labels=(PROJECTION_BASE,))
    assert out[PROJECTION_BASE][0].shape[1] == 12 + 2  # the run goes on: tokens, </s>, one padding
    with pytest.warns(PromptWarning, match=r"of its \d+ tokens were dropped"):
        te.encode("a red car driving along a coastal road at sunset " * 5, labels=(PROJECTION_BASE,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        te.encode("a red car driving along a coastal road", labels=(PROJECTION_BASE,))  # no warning
        te.tokenize(RUSSIAN, warn=False)


def test_pipeline_encode_prompt_warns_for_the_negative_prompt_too(release):
    from kv_core.stages.text import encode_prompt

    te = TextEncoder.from_files(release.t5_folder, release.t5_projections, tokens_length=32)
    with pytest.warns(PromptWarning) as record:
        encode_prompt(te, "a red car", RUSSIAN)
    assert len(record) == 1 and "машина" in str(record[0].message)


# --- text-encoder parts that load but could not work (issue 9 §2) ------------------------------

def test_projections_of_another_width_are_refused_at_load(tmp_path, release):
    projections = {label: TextProjection(TINY_T5_DIM * 2, TINY_CONTEXT_DIM).state_dict()
                   for label in (PROJECTION_BASE, PROJECTION_INTERPOLATION)}
    torch.save(projections, tmp_path / "t5_projections.pt")
    with pytest.raises(ValueError, match=rf"takes {TINY_T5_DIM * 2}-wide.*{TINY_T5_DIM}-wide"):
        TextEncoder.from_files(release.t5_folder, tmp_path / "t5_projections.pt")


def test_tokens_length_below_two_is_refused(release):
    with pytest.raises(ValueError, match="tokens_length must be at least 2"):
        TextEncoder.from_files(release.t5_folder, release.t5_projections, tokens_length=1)


def test_projections_of_another_context_width_than_configs_json_are_refused(release):
    with pytest.raises(ValueError, match=rf"make {TINY_CONTEXT_DIM}-wide contexts but configs.json says "
                                         rf"text_encoder.context_dim {TINY_CONTEXT_DIM + 1}"):
        TextEncoder.from_files(release.t5_folder, release.t5_projections, context_dim=TINY_CONTEXT_DIM + 1)
    te = TextEncoder.from_files(release.t5_folder, release.t5_projections, context_dim=TINY_CONTEXT_DIM)
    assert te.encode("a red car")[PROJECTION_BASE][0].shape[-1] == TINY_CONTEXT_DIM
