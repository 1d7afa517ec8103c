"""`vlmo-fast convert ...`: the converters behind one subcommand (vlmo_fast/cli.py calls these two functions).

    vlmo-fast convert coco KARPATHY_JSON IMAGE_ROOT OUT_DIR
    vlmo-fast convert f30k KARPATHY_JSON IMAGE_ROOT OUT_DIR
    vlmo-fast convert vqa ROOT OUT_DIR [--min-answer-count 9] [--rest-val-images 1000] [--seed 0]
    vlmo-fast convert nlvr2 ROOT OUT_DIR [--json-dir DIR]
    vlmo-fast convert vg REGIONS_JSON IMAGE_ROOT OUT_DIR
    vlmo-fast convert sbu ROOT OUT_DIR [--shard-rows 100000]            (official layout: ROOT/annot.json)
    vlmo-fast convert sbu TSV IMAGE_ROOT OUT_DIR [--shard-rows 100000]  (caption<TAB>image lines)
    vlmo-fast convert gcc ROOT OUT_DIR [--split train|val]             (official: ROOT/{split}_annot.json)
    vlmo-fast convert gcc TSV IMAGE_ROOT OUT_DIR [--split train|val] [--shard-rows 100000]
    vlmo-fast convert wikibk TEXT [TEXT ...] OUT_DIR [--split train|val] [--shard-rows 100000]
    vlmo-fast convert synthetic OUT_DIR [--seed 0] [--image-size 64]
    vlmo-fast convert shards ARROW_DIR OUT_DIR                      arrow tables -> WebDataset tar shards
Every converter takes --format wds (tar shards instead of arrow files) and --shard-samples N (rows per shard).
"""
from __future__ import annotations

import argparse
import logging


def add_convert_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `convert` subcommand (with one sub-subcommand per dataset) to a CLI's subparsers.

    Example: add_convert_parser(parser.add_subparsers(dest="command"))
    """
    p = subparsers.add_parser("convert", help="convert raw datasets into ViLT arrow files")
    sub = p.add_subparsers(dest="dataset", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help)
        q.add_argument("--no-progress", action="store_true", help="no progress bar")
        q.add_argument("--shard-samples", type=int, default=10_000, help="rows (images) per tar shard (wds)")
        if name != "shards":
            q.add_argument("--format", choices=("arrow", "wds"), default="arrow",
                           help="arrow files (official) or WebDataset tar shards with DALI index files")
        return q

    for name in ("coco", "f30k"):
        q = add(name, f"{name} Karpathy splits (dataset_{'coco' if name == 'coco' else 'flickr30k'}.json)")
        q.add_argument("karpathy_json")
        q.add_argument("image_root")
        q.add_argument("out_dir")
    q = add("vqa", "VQAv2 questions, annotations and COCO images")
    q.add_argument("root")
    q.add_argument("out_dir")
    q.add_argument("--min-answer-count", type=int, default=9, help="answer vocabulary threshold (official 9)")
    q.add_argument("--rest-val-images", type=int, default=1000, help="val images held out as rest_val")
    q.add_argument("--seed", type=int, default=0, help="seed of the val shuffle")
    q = add("nlvr2", "NLVR2 JSONL and image pairs")
    q.add_argument("root")
    q.add_argument("out_dir")
    q.add_argument("--json-dir", default=None, help="folder of train/dev/test1.json (default ROOT/nlvr2/data)")
    q = add("vg", "Visual Genome region descriptions")
    q.add_argument("regions_json")
    q.add_argument("image_root")
    q.add_argument("out_dir")
    for name in ("sbu", "gcc"):
        q = add(name, f"{name.upper()} captions: the official layout (annot.json, images_*) or a caption list")
        q.add_argument("paths", nargs="+", metavar="PATH",
                       help="ROOT OUT_DIR for the official layout, or TSV IMAGE_ROOT OUT_DIR for caption<TAB>image "
                            "lines")
        q.add_argument("--shard-rows", type=int, default=100_000)
        if name == "gcc":
            q.add_argument("--split", choices=("train", "val"), default="train")
    q = add("wikibk", "plain text, one sentence per line")
    q.add_argument("paths", nargs="+", metavar="PATH", help="text files, then OUT_DIR last")
    q.add_argument("--split", choices=("train", "val"), default="train")
    q.add_argument("--shard-rows", type=int, default=100_000)
    q = add("synthetic", "synthetic shapes data (caption, VQA, NLVR2, text)")
    q.add_argument("out_dir")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--image-size", type=int, default=64)
    q = add("shards", "arrow tables of a directory -> WebDataset tar shards, DALI index files and manifests")
    q.add_argument("arrow_dir")
    q.add_argument("out_dir")
    return p


def _web_converter(args: argparse.Namespace, progress_bar: bool):
    """SBU / GCC from the official layout (ROOT OUT_DIR) or from a caption list (TSV IMAGE_ROOT OUT_DIR), as a
    function of the output directory."""
    from vlmo_fast.data.convert.captions import convert_gcc, convert_sbu
    from vlmo_fast.data.convert.web_captions import convert_gcc_layout, convert_sbu_layout

    if len(args.paths) not in (2, 3):
        raise SystemExit(f"convert {args.dataset}: give ROOT OUT_DIR (official layout) or TSV IMAGE_ROOT OUT_DIR")
    kw = dict(shard_rows=args.shard_rows, progress_bar=progress_bar)
    if args.dataset == "gcc":
        kw["split"] = args.split
    *inputs, args.out_dir = args.paths
    if len(inputs) == 1:
        fn = convert_sbu_layout if args.dataset == "sbu" else convert_gcc_layout
    else:
        fn = convert_sbu if args.dataset == "sbu" else convert_gcc
    return lambda out: fn(*inputs, out, **kw)


def _converter(args: argparse.Namespace):
    """The converter chosen by `args.dataset` as a function of the output directory."""
    from vlmo_fast.data.convert.captions import convert_vg, convert_wikibk
    from vlmo_fast.data.convert.karpathy import convert_karpathy
    from vlmo_fast.data.convert.nlvr2 import convert_nlvr2
    from vlmo_fast.data.convert.vqa import convert_vqa
    from vlmo_fast.data.synthetic import write_synthetic

    pb = not args.no_progress
    d = args.dataset
    if d in ("coco", "f30k"):
        return lambda out: convert_karpathy(args.karpathy_json, args.image_root, out, dataset=d, progress_bar=pb)
    if d == "vqa":
        return lambda out: convert_vqa(args.root, out, min_answer_count=args.min_answer_count,
                                       rest_val_images=args.rest_val_images, seed=args.seed, progress_bar=pb)
    if d == "nlvr2":
        return lambda out: convert_nlvr2(args.root, out, json_dir=args.json_dir, progress_bar=pb)
    if d == "vg":
        return lambda out: convert_vg(args.regions_json, args.image_root, out, progress_bar=pb)
    if d in ("sbu", "gcc"):
        return _web_converter(args, pb)
    if d == "wikibk":
        if len(args.paths) < 2:
            raise SystemExit("convert wikibk: give at least one text file and then OUT_DIR")
        args.out_dir = args.paths[-1]
        return lambda out: convert_wikibk(args.paths[:-1], out, split=args.split, shard_rows=args.shard_rows,
                                          progress_bar=pb)
    if d == "synthetic":
        return lambda out: write_synthetic(out, seed=args.seed, image_size=args.image_size, progress_bar=pb)
    raise SystemExit(f"convert: unknown dataset {d!r}")


def run_convert(args: argparse.Namespace) -> int:
    """Run the converter chosen by `args.dataset`; prints a summary; returns the exit code (0 on success)."""
    from vlmo_fast.data.convert.to_shards import arrow_to_shards, convert_as_shards

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    pb = not args.no_progress
    if args.dataset == "shards":
        report = arrow_to_shards(args.arrow_dir, args.out_dir, max_samples=args.shard_samples, progress_bar=pb)
    else:
        convert = _converter(args)
        if args.format == "wds":
            report = convert_as_shards(convert, args.out_dir, max_samples=args.shard_samples, progress_bar=pb)
        else:
            report = convert(args.out_dir)
    print(report.summary())
    return 0
