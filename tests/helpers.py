"""Helpers shared by tests of several areas (each area's own helpers sit beside its tests: data/helpers.py,
kernels/parity.py, csrc/batches.py, distributed/common.py)."""
from __future__ import annotations

from torch import Tensor

from vlmo_fast.model.vlmo import Encoding, VLMo


def encode_pair_batch(model: VLMo, text_ids: Tensor | None = None, text_lens: Tensor | None = None,
                      images: Tensor | None = None, **kwargs) -> Encoding:
    """Plan and run one pass over a padded batch (every row returned unless rows= is given)."""
    layout = model.plan(text_lens=text_lens, num_images=0 if images is None else images.shape[0])
    return model.encode(layout, text_ids=text_ids, images=images, **kwargs)
