"""The layouts the data loader plans for a compiled step (vlmo_fast/train/layouts.py): bucketed shapes, padding
rows that change no result, the MLM rows, the extension against its reference, and the collate hook in a worker."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from tests.train.helpers import PRETRAIN, task_batch, tiny_model
from vlmo_fast.bench import synthetic_batch
from vlmo_fast.data.collate import Collator
from vlmo_fast.ops import _ext
from vlmo_fast.ops.packing import make_layout_queries, pack_text
from vlmo_fast.train.layouts import LayoutPlanner, bucket_queries, text_slots
from vlmo_fast.train.step import StepDraws, task_losses


def layout_fields(layout) -> dict:
    return {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in vars(layout).items()}


@pytest.mark.parametrize("buckets", [1, 4, 5])
def test_bucketed_queries(buckets):
    g = torch.Generator().manual_seed(buckets)
    width, P = 40, 16
    grain = -(-width // buckets)
    for _ in range(50):
        lens = torch.randint(3, width + 1, (P,), generator=g)
        q, slots = bucket_queries(lens, width, buckets), text_slots(lens, width, buckets)
        assert (q >= lens).all() and (q <= slots).all() and slots >= int(lens.max())
        assert slots == width or slots % grain == 0
        step = P * grain // 2
        assert int(q.sum()) % step == 0 or int(q.sum()) == P * slots  # a multiple of the row grain, or all full
        assert int(q.sum()) - int(lens.sum()) < step
    assert torch.equal(bucket_queries(lens, width, None), lens)


def test_shapes_of_an_epoch_are_few():
    """Planned shapes of 200 batches of captions 8..20 long padded to 40 (the benchmark's): a handful of graphs."""
    cfg = tiny_model(PRETRAIN).cfg
    planner = LayoutPlanner(PRETRAIN, cfg.num_image_tokens)
    shapes = set()
    for seed in range(200):
        plan = planner.plan(synthetic_batch(cfg, 16, 40, seed, "cpu"))
        shapes.add((plan.text.num_rows, plan.text.max_text_q, plan.pretrain.num_rows, plan.mlm_rows.shape[0]))
    assert len(shapes) <= 4, shapes


@pytest.mark.skipif(not _ext.available(torch.device("cpu")), reason="vlmo_fast._C is not built")
def test_extension_plans_as_the_reference(monkeypatch):
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(0, 9, (7,), generator=g)
    q = lens + torch.randint(0, 4, (7,), generator=g)
    for image_len in (0, 5):
        ext = make_layout_queries(lens, q, image_len)
        monkeypatch.setenv("VLMO_FAST_KERNELS", "ref")
        ref = make_layout_queries(lens, q, image_len)
        monkeypatch.delenv("VLMO_FAST_KERNELS")
        assert layout_fields(ext) == layout_fields(ref)
    with pytest.raises(ValueError, match="pair 2 has 1 query rows for 3 real tokens"):
        make_layout_queries(torch.tensor([1, 1, 3]), torch.tensor([1, 1, 1]), 0)


def test_exact_plans_are_the_model_plans():
    """buckets=None plans what the model plans itself for the text, image and VQA passes."""
    tasks = frozenset({"irtr", "vqa"})
    model = tiny_model(tasks)
    batch = synthetic_batch(model.cfg, 5, 20, 0, "cpu")
    plan = LayoutPlanner(tasks, model.cfg.num_image_tokens, buckets=None).plan(batch)
    lens = batch["text_lens"]
    assert layout_fields(plan.text) == layout_fields(model.plan(text_lens=lens))
    assert layout_fields(plan.image) == layout_fields(model.plan(num_images=5))
    assert layout_fields(plan.fused) == layout_fields(model.plan(text_lens=lens, num_images=5))


def test_mlm_rows_point_at_the_supervised_tokens():
    model = tiny_model(PRETRAIN)
    batch = synthetic_batch(model.cfg, 6, 20, 1, "cpu")
    plan = LayoutPlanner(PRETRAIN, model.cfg.num_image_tokens).plan(batch)
    B = 6
    labels = torch.cat([torch.full((3 * B, 20), -100), batch["text_labels_mlm"]])
    packed = pack_text(labels, plan.pretrain)  # every planned text row's label (padding rows: -100)
    real = plan.mlm_labels != -100
    assert int(real.sum()) == int((batch["text_labels_mlm"] != -100).sum())
    assert torch.equal(packed[plan.mlm_rows[real]], plan.mlm_labels[real])
    assert plan.mlm_rows.shape[0] % 8 == 0


@pytest.mark.parametrize("tasks", [PRETRAIN, frozenset({"textmlm"}), frozenset({"vqa"}), frozenset({"nlvr2"}),
                                   frozenset({"irtr"})], ids=sorted)
def test_padding_rows_change_no_result(tasks):
    """The bucketed plan's padded query rows and slots leave every loss and gradient as the unplanned step's
    (no randomness: drop path 0, the hard negatives given)."""
    model = tiny_model(tasks)
    batch = task_batch(model.cfg, tasks)
    planned = {**batch, **LayoutPlanner(tasks, model.cfg.num_image_tokens, vqa_labels=7)(batch)}
    B = batch["text_ids"].shape[0]
    negatives = (torch.tensor([1, 2, 0, 4, 3]), torch.tensor([3, 0, 4, 1, 2]))[:B] if "itm" in tasks else None
    results = []
    for b in (batch, planned):
        model.zero_grad()
        losses, metrics = task_losses(model, b, set(tasks), draws=StepDraws(negatives=negatives))
        sum(losses.values()).backward()
        results.append((losses, metrics, {k: p.grad.clone() for k, p in model.named_parameters()
                                          if p.grad is not None}))
    (l0, m0, g0), (l1, m1, g1) = results
    assert planned["layouts"].text is None or planned["layouts"].text.num_rows > int(batch["text_lens"].sum())
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m1, m0, rtol=1e-5, atol=1e-6)
    assert g1.keys() == g0.keys()
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-6, msg=k)


def test_collate_plans_in_the_loader_workers():
    cfg = tiny_model(PRETRAIN).cfg
    samples = [{"text": "a b", "text_ids": list(range(100, 100 + n)), "sample_seed": n, "image": torch.zeros(3, 32, 32)}
               for n in (3, 7, 5, 9)]
    collate = Collator(max_text_len=20, planner=LayoutPlanner(PRETRAIN, cfg.num_image_tokens))
    batch = next(iter(DataLoader(samples, batch_size=4, collate_fn=collate, num_workers=1)))
    plan = batch["layouts"]
    assert plan.pretrain.num_pairs == 16 and plan.text.text_k_len.tolist() == batch["text_lens"].tolist()
