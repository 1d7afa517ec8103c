"""Parity of the drop-in surface with the official code: every output, hidden state, loss and gradient of the
official fixtures (FIXTURES.md), at the tolerances of design.md, through vlmo_fast.compat."""
from __future__ import annotations

import torch

from tests.helpers import assert_all_outputs_match, assert_gradients_match, build, official_batch
from vlmo_fast.compat import objectives as obj


def test_every_output_and_hidden_state(official):
    assert_all_outputs_match(build(official), official)


def test_vqa_targets(official):
    model = build(official)
    with torch.no_grad():
        vqa = obj.compute_vqa(model, official_batch(official))
    assert torch.equal(vqa["vqa_targets"], official.tensors["in.vqa_targets"])


def test_gradients_of_weighted_loss(official):
    """d(sum_X out.X * gradw.X)/d(param) for every parameter, as stored in the fixtures."""
    assert_gradients_match(build(official), official)
