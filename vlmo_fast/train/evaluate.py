"""Evaluation: image-text retrieval (official ITC ranking, optional ITM re-ranking), VQA score, NLVR2 accuracy."""
from __future__ import annotations

import collections
import json
from pathlib import Path

import torch
from torch import Tensor

from vlmo_fast.data.arrow import SplitTable
from vlmo_fast.data.retrieval import retrieval_split
from vlmo_fast.data.collate import text_lens
from vlmo_fast.model.inference import (image_features, itm_logits, nlvr2_logits, supervised_rows, text_features,
                                       vqa_logits)
from vlmo_fast.model.vlmo import VLMo
from vlmo_fast.objectives import vqa_targets
from vlmo_fast.run_config import RunConfig
from .data import build_split, loader, to_device


@torch.no_grad()
def embed_texts(model: VLMo, ids: Tensor, lens: Tensor, batch_size: int, device) -> Tensor:
    """(N, D) l2-normalised ITC text features (text-only pass, no VL branch: the official infer_text_ft)."""
    return torch.cat([text_features(model, ids[i:i + batch_size].to(device), lens[i:i + batch_size].to(device))
                      ["text"].float() for i in range(0, ids.shape[0], batch_size)])


@torch.no_grad()
def embed_images(model: VLMo, images: Tensor) -> Tensor:
    """(B, D) l2-normalised ITC image features of (B, 3, S, S) images."""
    return image_features(model, images)["image"].float()


def recall_at_k(scores: Tensor, text_image: Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Official retrieval recalls from scores (N_images, N_texts) and the image of each text.

    TR@k: an image is a hit if any of its top-k texts is one of its captions; IR@k: a text is a hit if its image
    is among its top-k images."""
    n_img, n_txt = scores.shape
    text_image = text_image.to(scores.device)
    out = {}
    for k in ks:
        top_txt = scores.topk(min(k, n_txt), dim=1).indices  # (N_images, k)
        out[f"recalls/tr_r{k}"] = (text_image[top_txt] == torch.arange(n_img, device=scores.device)[:, None]) \
            .any(1).float().mean().item()
        top_img = scores.t().topk(min(k, n_img), dim=1).indices  # (N_texts, k)
        out[f"recalls/ir_r{k}"] = (top_img == text_image[:, None]).any(1).float().mean().item()
    return out


@torch.no_grad()
def itm_rerank(model: VLMo, scores: Tensor, text_ids: Tensor, text_lens: Tensor, images: Tensor, k: int,
               batch_size: int, device) -> Tensor:
    """Scores with each image's top-k texts and each text's top-k images re-scored as ITC + ITM positive logit
    (the paper's dual-encoder-then-fusion use); every other pair keeps its ITC score minus a margin so re-ranked
    candidates stay on top."""
    n_img, n_txt = scores.shape
    out = scores.clone() - 1e4
    pairs = set()
    for i, row in enumerate(scores.topk(min(k, n_txt), dim=1).indices.tolist()):
        pairs.update((i, t) for t in row)
    for t, row in enumerate(scores.t().topk(min(k, n_img), dim=1).indices.tolist()):
        pairs.update((i, t) for i in row)
    pairs = sorted(pairs)
    for s in range(0, len(pairs), batch_size):
        chunk = torch.tensor(pairs[s:s + batch_size])
        img_i, txt_i = chunk[:, 0], chunk[:, 1]
        itm = itm_logits(model, text_ids[txt_i].to(device), text_lens[txt_i].to(device),
                         images[img_i].to(device))[:, 1].float()
        out[img_i, txt_i] = scores[img_i, txt_i] + itm.to(scores.device)
    return out


@torch.no_grad()
def vqa_predictions(model: VLMo, batch: dict) -> tuple[Tensor, Tensor]:
    """(arg-max label, its target score) per question of a batch."""
    logits = _vqa_logits(model, batch).float()
    labels = logits.argmax(1)
    targets = vqa_targets(batch["vqa_labels"], batch["vqa_scores"], logits.shape[1], logits.device)
    return labels, targets.gather(1, labels[:, None]).squeeze(1)


def _vqa_logits(model: VLMo, batch: dict) -> Tensor:
    return vqa_logits(model, batch["text_ids"], text_lens(batch), batch["image"][0])


def majority_score(batch_labels: list[list[int]], batch_scores: list[list[float]], label: int) -> float:
    """Score of always answering `label` over the given questions."""
    total = sum(dict(zip(ls, ss)).get(label, 0.0) for ls, ss in zip(batch_labels, batch_scores))
    return total / max(1, len(batch_labels))


@torch.no_grad()
def nlvr2_correct(model: VLMo, batch: dict) -> Tensor:
    logits = nlvr2_logits(model, batch["text_ids"], text_lens(batch), batch["image_0"][0], batch["image_1"][0])
    return logits.argmax(-1) == torch.as_tensor(batch["answers"], device=logits.device)


# ---------------------------------------------------------------------------------------------------------------
# The evaluation of a run (official metric names, fractions in [0, 1])
def _eval_loader(config: RunConfig, split: str, device):
    ds = build_split(config, split, train=False)
    limit = config.evaluation.eval_limit
    n = min(len(ds), limit) if limit else len(ds)
    return loader(ds, list(range(n)), config, config.evaluation.eval_batch_size, 0, False, device)


def evaluate_retrieval(model: VLMo, config: RunConfig, device, split: str = "test") -> dict[str, float]:
    """TR/IR@1/5/10 on a caption split by the official ITC ranking (itm_rerank_k > 0: ITM re-ranking of the
    top-k, the paper's use)."""
    name = config.data.datasets[0]
    data = retrieval_split(config.data.data_root, name, split, image_size=config.model.image_size,
                           max_text_len=config.model.max_text_len)
    bs, limit = config.evaluation.eval_batch_size, config.evaluation.eval_limit
    n_img = min(data.num_images, limit) if limit else data.num_images
    keep = data.text_img_index < n_img  # the captions of the evaluated images
    ids, lens, text_image = data.text_ids[keep], data.text_lens[keep], data.text_img_index[keep]
    text_feats = embed_texts(model, ids, lens, bs, device)
    images = torch.stack([data.images[i]["image"] for i in range(n_img)])
    image_feats = torch.cat([embed_images(model, images[i:i + bs].to(device)) for i in range(0, len(images), bs)])
    scores = image_feats @ text_feats.t()
    k = config.evaluation.itm_rerank_k
    if k > 0 and hasattr(model, "itm_score"):
        scores = itm_rerank(model, scores, ids, lens, images, k, bs, device)
    return recall_at_k(scores, text_image)


def evaluate_vqa(model: VLMo, config: RunConfig, device, answers: list[str] | None, log_dir) -> dict[str, float]:
    """VQA score on the val split, the majority-answer baseline, and the submission JSON (question_id, answer) of
    the test split in log_dir/vqa_submission.json."""
    majority = majority_answer(config)
    total, n, base = 0.0, 0, 0.0
    for batch in _eval_loader(config, "val", device):
        batch = to_device(batch, device)
        _, score = vqa_predictions(model, batch)
        total += score.sum().item()
        n += len(score)
        base += majority_score(batch["vqa_labels"], batch["vqa_scores"], majority) * len(score)
    if log_dir is not None:
        predictions = []
        for batch in _eval_loader(config, "test", device):
            labels = _vqa_logits(model, to_device(batch, device)).argmax(1).tolist()
            predictions += [{"question_id": int(q), "answer": answers[l] if answers and l < len(answers) else "unknown"}
                            for q, l in zip(batch["qid"], labels)]
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        (Path(log_dir) / "vqa_submission.json").write_text(json.dumps(predictions))
    return {"vqa/val/score": total / max(1, n), "vqa/val/majority_baseline": base / max(1, n)}


def majority_answer(config: RunConfig) -> int:
    """The most frequent answer label of the training questions (each question counted by its top-scoring label)."""
    counts = collections.Counter()
    for name in config.data.datasets:
        table = SplitTable(config.data.data_root, name, "train").table
        for row_labels, row_scores in zip(table.column("answer_labels").to_pylist(),
                                          table.column("answer_scores").to_pylist()):
            for ls, ss in zip(row_labels, row_scores):
                if ls:
                    counts[ls[max(range(len(ss)), key=ss.__getitem__)]] += 1
    return counts.most_common(1)[0][0] if counts else 0


def evaluate_nlvr2(model: VLMo, config: RunConfig, device) -> dict[str, float]:
    """Accuracy on the dev and test tables of the val split (split by table_name as officially)."""
    hits = {"dev": [], "test": []}
    for batch in _eval_loader(config, "val", device):
        batch = to_device(batch, device)
        correct = nlvr2_correct(model, batch).tolist()
        for name, c in zip(batch["table_name"], correct):
            hits["dev" if "dev" in name else "test"].append(c)
    return {f"nlvr2/{k}/accuracy": sum(v) / len(v) for k, v in hits.items() if v}


def evaluate(model: VLMo, config: RunConfig, device, answers: list[str] | None = None,
             log_dir=None) -> dict[str, float]:
    """Every metric of the run's tasks."""
    tasks = set(model.cfg.tasks)
    metrics: dict[str, float] = {}
    if tasks & {"itc", "irtr"} and (config.evaluation.get_recall_metric or tasks & {"irtr"}):
        metrics.update(evaluate_retrieval(model, config, device))
    if "vqa" in tasks:
        metrics.update(evaluate_vqa(model, config, device, answers, log_dir))
    if "nlvr2" in tasks:
        metrics.update(evaluate_nlvr2(model, config, device))
    if "textmlm" in tasks:
        metrics.update(evaluate_textmlm(model, config, device))
    return metrics


@torch.no_grad()
def evaluate_textmlm(model: VLMo, config: RunConfig, device) -> dict[str, float]:
    """Masked-token accuracy of the text-only MLM on the val split."""
    correct = total = 0.0
    for batch in _eval_loader(config, "val", device):
        batch = to_device(batch, device)
        layout = model.plan(text_lens=text_lens(batch))
        rows, target = supervised_rows(layout, batch["text_labels_mlm"])
        feats = model.encode(layout, text_ids=batch["text_ids_mlm"], rows=rows).feats
        correct += (model.mlm_score(feats).argmax(-1) == target).sum().item()
        total += target.numel()
    return {"textmlm/val/accuracy": correct / max(1, total)}
