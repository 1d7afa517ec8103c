"""`vlmo-fast predict`: inference on image files and texts with a vlmo-fast checkpoint directory, an official
checkpoint file, or an official weight's name (`vlmo-fast pretrained`).

    vlmo-fast predict vqa CKPT --image cat.jpg --question "what colour is the cat?"
    vlmo-fast predict embed CKPT --images DIR --out image_feats.safetensors      (or --texts FILE, one per line)
    vlmo-fast predict retrieve CKPT --images DIR --text "a red circle" --top-k 5
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from vlmo_fast.checkpoint.native import CONFIG, load_model, read_config
from vlmo_fast.data.images import BadImage, decode_rgb
from vlmo_fast.data.tokenizer import get_tokenizer
from vlmo_fast.data.transforms import square_transform
from vlmo_fast.model.inference import image_features, text_features, vqa_logits

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def load_images(paths: list[Path], size: int) -> tuple[torch.Tensor, list[Path], list[str]]:
    """(N, 3, S, S) in [-1, 1] for the readable images; unreadable ones are skipped and reported."""
    tf = square_transform(size)
    tensors, kept, skipped = [], [], []
    for p in paths:
        try:
            tensors.append(tf(decode_rgb(p.read_bytes(), key=str(p))))
            kept.append(p)
        except (BadImage, OSError) as err:
            skipped.append(f"{p}: {err}")
    if not tensors:
        raise ValueError(f"no readable image among {len(paths)} file(s): {skipped[:3]}")
    return torch.stack(tensors), kept, skipped


def image_files(folder: str) -> list[Path]:
    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"image folder not found: {d}")
    files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {d}")
    return files


def _image_feats(model, files: list[Path], batch: int) -> tuple[torch.Tensor, list[Path]]:
    images, kept, skipped = load_images(files, model.cfg.image_size)
    for s in skipped:
        print(f"skipped {s}")
    with torch.no_grad():
        feats = [image_features(model, images[i:i + batch])["image"] for i in range(0, len(images), batch)]
    return torch.cat(feats), kept


def _texts(model, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = get_tokenizer().encode(texts, model.cfg.max_text_len)
    return enc.ids, enc.lens


@torch.no_grad()
def _text_feats(model, texts: list[str], batch: int) -> torch.Tensor:
    ids, lens = _texts(model, texts)
    return torch.cat([text_features(model, ids[i:i + batch], lens[i:i + batch])["text"]
                      for i in range(0, len(texts), batch)])


# The heads each command needs, and what to do when a checkpoint lacks them.
NEEDED_HEADS = {
    "vqa": (("vqa_classifier",), "no VQA head: fine-tune with a task_finetune_vqa_* task first"),
    "embed": (("itc_text_proj", "itc_image_proj"), "no ITC heads (itc_text_proj, itc_image_proj): use a pre-trained "
              "or retrieval checkpoint (task_mlm_itm_itc_*, task_finetune_irtr_*)"),
}
NEEDED_HEADS["retrieve"] = NEEDED_HEADS["embed"]


def load_for_predict(checkpoint: str, mode: str) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, the extra metadata of a vlmo-fast checkpoint); fails clearly when the checkpoint lacks
    the heads `mode` needs."""
    if (Path(checkpoint) / CONFIG).is_file():
        model, (_, meta) = load_model(checkpoint).eval(), read_config(checkpoint)
    else:
        from vlmo_fast.pretrained import from_pretrained

        model, meta = from_pretrained(checkpoint), {}
    heads, advice = NEEDED_HEADS[mode]
    if not all(hasattr(model, h) for h in heads):
        raise ValueError(f"{checkpoint} has {advice} (its heads: {', '.join(model.cfg.tasks)})")
    return model, meta


def run_predict(args: argparse.Namespace) -> int:
    model, meta = load_for_predict(args.checkpoint, args.mode)
    if args.mode == "vqa":
        answers = meta.get("vqa_answers")
        images, _, _ = load_images([Path(args.image)], model.cfg.image_size)
        ids, lens = _texts(model, [args.question])
        with torch.no_grad():
            probs = vqa_logits(model, ids, lens, images).sigmoid()[0]
        top = probs.topk(min(args.top_k, probs.numel()))
        for p, i in zip(top.values.tolist(), top.indices.tolist()):
            print(f"{answers[i] if answers else i}\t{p:.3f}")
        return 0
    if args.mode == "embed":
        if bool(args.images) == bool(args.texts):
            raise ValueError("give exactly one of --images DIR or --texts FILE")
        if args.images:
            feats, kept = _image_feats(model, image_files(args.images), args.batch_size)
            names = [str(p) for p in kept]
        else:
            names = [t for t in Path(args.texts).read_text().splitlines() if t.strip()]
            feats = _text_feats(model, names, args.batch_size)
        save_file({"features": feats.contiguous()}, args.out, metadata={"names": json.dumps(names)})
        print(f"wrote {feats.shape[0]} x {feats.shape[1]} features to {args.out}")
        return 0
    files = image_files(args.images)
    feats, kept = _image_feats(model, files, args.batch_size)
    scores = (feats @ _text_feats(model, [args.text], 1).t()).squeeze(1)
    top = scores.topk(min(args.top_k, len(kept)))
    for s, i in zip(top.values.tolist(), top.indices.tolist()):
        print(f"{s:.4f}\t{kept[i]}")
    return 0


def add_predict_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("predict", help="answer questions, embed, retrieve with a trained checkpoint")
    sub = p.add_subparsers(dest="mode", required=True)
    q = sub.add_parser("vqa", help="answer a question about an image")
    q.add_argument("checkpoint", help="a vlmo-fast checkpoint directory (LOG_DIR/model), an official checkpoint "
                                      "file or an official weight's name")
    q.add_argument("--image", required=True)
    q.add_argument("--question", required=True)
    q.add_argument("--top-k", type=int, default=3)
    q = sub.add_parser("embed", help="ITC features of images or texts to a safetensors file")
    q.add_argument("checkpoint")
    q.add_argument("--images", help="folder of images")
    q.add_argument("--texts", help="text file, one text per line")
    q.add_argument("--out", required=True)
    q.add_argument("--batch-size", type=int, default=64)
    q = sub.add_parser("retrieve", help="the top-k images of a folder for a text")
    q.add_argument("checkpoint")
    q.add_argument("--images", required=True)
    q.add_argument("--text", required=True)
    q.add_argument("--top-k", type=int, default=5)
    q.add_argument("--batch-size", type=int, default=64)
    return p
