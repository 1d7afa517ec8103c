"""The compiled training step (compile=True): every task's step as one full graph over the layouts the loader plans
(the CPU proxy for "reads nothing back from the device"), equal to the eager step on the same draws; the trainer's
50 compiled steps on batches of varied caption lengths; the hard negatives drawn from pre-drawn uniforms."""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from tests.helpers import losses, run
from tests.train.helpers import PRETRAIN, task_batch, tiny_model
from vlmo_fast import objectives
from vlmo_fast.train.layouts import LayoutPlanner
from vlmo_fast.train.runtime import compile_mode
from vlmo_fast.train.step import task_losses
from vlmo_fast.train.step_draws import draw_step
from vlmo_fast.train.trainer import StepModule

TASKS = [PRETRAIN, frozenset({"textmlm"}), frozenset({"vqa"}), frozenset({"nlvr2"}), frozenset({"irtr"})]


def step_outputs(fn, model, batch, tasks, draws):
    model.zero_grad()
    losses_, metrics = fn(model, batch, set(tasks), draws=draws)
    sum(losses_.values()).backward()
    return losses_, metrics, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tasks", TASKS, ids=sorted)
def test_every_task_step_is_one_full_graph(tasks):
    """fullgraph=True: no graph break, so no host read of a layout, a row count or a sample inside the step; the
    losses, metrics and gradients equal the eager step's on the same draws (drop path and dropout on)."""
    model = tiny_model(tasks)
    model.cfg.drop_path_rate = 0.1
    for blk in model.transformer.blocks:
        blk.drop_path = 0.1
    model.text_embeddings.dropout_rate = 0.1
    batch = task_batch(model.cfg, tasks)
    batch = {**batch, **LayoutPlanner(tasks, model.cfg.num_image_tokens, vqa_labels=7)(batch)}
    draws = draw_step(model, batch["layouts"], set(tasks), torch.Generator().manual_seed(1),
                      torch.Generator().manual_seed(2))
    assert any(d is not None and d.drop_path.any() for d in draws.passes.values())
    torch._dynamo.reset()
    compiled = torch.compile(task_losses, fullgraph=True, dynamic=False, backend="aot_eager")
    eager, got = (step_outputs(fn, model, batch, tasks, draws) for fn in (task_losses, compiled))
    for e, g in zip(eager, got):
        assert e.keys() == g.keys()
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_negatives_from_uniforms_follow_the_weights():
    """The inverse-CDF draws: never the own positive, and every other candidate as often as its softmax weight
    (over the gathered batch of 4, local batch 3) says."""
    sim = torch.tensor([[0.0, 2.0, 1.0, 0.0], [1.0, 0.0, 0.0, 3.0], [0.5, 0.5, 9.0, 0.5]])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(2, 3, 4)
    for _ in range(3000):
        drawn = objectives.hard_negative_indices(sim, sim, 3, uniforms=torch.rand(2, 3, generator=g))
        for d, idx in enumerate(drawn):
            counts[d, torch.arange(3), idx] += 1
    expected = torch.softmax(sim, 1).fill_diagonal_(0)
    expected = expected / expected.sum(1, keepdim=True)
    assert (counts[:, torch.arange(3), torch.arange(3)] == 0).all()
    for d in range(2):
        torch.testing.assert_close(counts[d] / 3000, expected, atol=0.03, rtol=0)


@pytest.mark.slow
def test_trainer_compiles_few_graphs_and_matches_eager(synthetic_root, tmp_path, monkeypatch):
    """50 compiled steps of the tiny pre-training (drop path on) over captions of varied lengths: at most 4 graphs,
    no graph break; the first 10 steps' losses as the eager step's on the same planned layouts and draws."""
    breaks = sum(counters["graph_break"].values())
    log = run(synthetic_root, tmp_path / "compiled", "max_train_steps=50", "compile=True", "per_gpu_batchsize=8",
              "batch_size=8", "precision=32", "log_every=1")
    assert log[-1]["compiles"] <= 4 and log[-1]["compiles"] >= 1, log[-1]["compiles"]
    assert sum(counters["graph_break"].values()) == breaks
    monkeypatch.setattr(StepModule, "compile", lambda self, **kw: None)  # the same planned step, eagerly
    eager = run(synthetic_root, tmp_path / "eager", "max_train_steps=10", "compile=True", "per_gpu_batchsize=8",
                "batch_size=8", "precision=32", "log_every=1")
    assert eager[-1]["compiles"] == 0
    torch.testing.assert_close(torch.tensor(losses(log)[:10]), torch.tensor(losses(eager)), rtol=1e-4, atol=0)


def test_compile_auto_where_it_measured_faster():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_mode("auto", cuda, torch.bfloat16, fsdp=False) == "step"
    assert compile_mode("auto", cpu, torch.bfloat16, fsdp=False) == "step"  # bf16 on the CPU: faster compiled
    assert compile_mode("auto", cpu, None, fsdp=False) is None  # fp32 on the CPU: no faster, so no compile time
    assert compile_mode(True, cpu, None, fsdp=False) == "step"
    assert compile_mode(True, cuda, torch.bfloat16, fsdp=True) == "blocks"
    assert compile_mode(False, cuda, torch.bfloat16, fsdp=False) is None


@pytest.mark.slow
def test_compiled_run_resumes_exactly(synthetic_root, tmp_path):
    """Stopped after 2 compiled steps and resumed, the run gives the uninterrupted compiled curve bit for bit (the
    draws come from the checkpointed generator and the per-step seeds, outside the graphs)."""
    extra = ["compile=True", "precision=32", "per_gpu_batchsize=8", "batch_size=8", "checkpoint_every=2"]
    full = losses(run(synthetic_root, tmp_path / "full", "max_train_steps=5", *extra))
    run(synthetic_root, tmp_path / "cut", "max_train_steps=2", *extra)
    assert losses(run(synthetic_root, tmp_path / "cut", "max_train_steps=5", "resume=True", *extra)) == full
