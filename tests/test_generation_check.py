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


def test_main_job_prints_one_line_per_divergence():
    from hf_flashmla.__main__ import divergence_lines

    lines = divergence_lines([dict(row=0, step=31, gap=0.05, gap_rel=4e-3, near_tie=True),
                              dict(row=1, step=2, gap=3.0, gap_rel=0.3, near_tie=False)])
    assert "row 0 first differs at new token 31" in lines[0] and "near-tie at this dtype" in lines[0]
    assert "NOT a near-tie" in lines[1]
