"""first_divergences: where flash_mla's greedy tokens first differ from the baseline's, and whether the baseline's own
logits make that step a near-tie (what the main job prints when bf16 tokens differ)."""
import torch

from hf_flashmla.generation_check import NEAR_TIE_REL, first_divergences


def test_identical_rows_have_no_divergence():
    tokens = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert first_divergences(tokens, torch.randn(2, 3, 8), tokens.clone(), 2e-2) == []


def test_first_differing_step_and_relative_gap():
    base = torch.tensor([[1, 2, 3], [4, 5, 6]])
    flash = torch.tensor([[1, 2, 3], [4, 7, 0]])  # row 1 first differs at step 1 (the later step does not count)
    logits = torch.zeros(2, 3, 8)
    logits[1, 1, 5], logits[1, 1, 7] = 10.0, 9.9
    (d,) = first_divergences(base, logits, flash, NEAR_TIE_REL[torch.bfloat16])
    assert (d["row"], d["step"]) == (1, 1)
    assert abs(d["gap"] - 0.1) < 1e-5 and abs(d["gap_rel"] - 0.01) < 1e-6
    assert d["near_tie"]


def test_a_clear_margin_is_not_a_near_tie():
    base, flash = torch.tensor([[3]]), torch.tensor([[4]])
    logits = torch.zeros(1, 1, 8)
    logits[0, 0, 3], logits[0, 0, 4] = 10.0, 5.0
    (d,) = first_divergences(base, logits, flash, NEAR_TIE_REL[torch.bfloat16])
    assert not d["near_tie"] and abs(d["gap_rel"] - 0.5) < 1e-6
