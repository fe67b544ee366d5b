"""calibration/attention_ranges.py: the q, k, v and output ranges of each block's attention, in the
calibration folder, and that padded text keys do not widen them.

Run: python -m pytest tests/calibration/test_attention_ranges.py
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from calibration.attention_ranges import attention_ranges
from export.quant_scales import SDPA_FIELDS, load_calibration


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_the_calibration_folder_holds_every_running_blocks_attention(calibrations, precision):
    calibration = load_calibration(calibrations[precision])
    assert sorted(calibration.attention) == [0, 1, 2]
    # Budget 2 runs blocks 0 and 3 of 4 (test_calibrate.py): the others have no ranges.
    assert sorted(calibration.attention[2]) == ["blocks.0.attn", "blocks.3.attn"]
    assert sorted(calibration.attention[0]) == [f"blocks.{i}.attn" for i in range(4)]
    for budget, blocks in calibration.attention.items():
        for name, ranges in blocks.items():
            for field in SDPA_FIELDS:
                amax = getattr(ranges, field)
                assert amax.shape == () and 0 < float(amax) < 1e4, (budget, name, field)


def test_the_output_range_is_the_o_projections_input_range(calibrations):
    """The attention's output, flattened over heads, is the o Linear's input: ModelOpt's max
    calibration of that input saw the same fp32 values on the same calls."""
    calibration = load_calibration(calibrations["fp8"])
    for budget, blocks in calibration.attention.items():
        for name, ranges in blocks.items():
            o_input = calibration.layers(budget)[f"{name}.o"].input_amax
            torch.testing.assert_close(ranges.o_amax, o_input, rtol=1e-6, atol=0)


def test_padded_text_keys_do_not_widen_the_ranges(tiny_model, held_out_calls):
    call = held_out_calls[0][0]
    assert not call.text_mask.all(), "the held-out prompts should leave text padding"
    before = attention_ranges(tiny_model.denoiser, [call])
    loud = call.text.masked_fill(~call.text_mask[..., None], 1e3)  # padding 1000x the tokens
    after = attention_ranges(tiny_model.denoiser, [dataclasses.replace(call, text=loud)])
    assert before.keys() == after.keys()
    for name in before:
        assert before[name] == after[name], name
