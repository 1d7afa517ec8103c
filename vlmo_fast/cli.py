"""The `vlmo-fast` command line: train (and evaluate), convert data, predict, benchmark, plot.

    vlmo-fast train TASK [PRESET ...] [key=value ...]     e.g. vlmo-fast train task_finetune_vqa_base_image480
                                                          data_root=... load_path=... per_gpu_batchsize=32
    vlmo-fast train TASK ... test_only=True               evaluation of a checkpoint (official semantics)
    vlmo-fast train TASK ... --print-config               the resolved config (key=value lines), nothing run
    vlmo-fast tasks                                       the named tasks and presets, one line each
    vlmo-fast demo [OUT_DIR]                              synthetic data, tiny pre-training, retrieval + VQA
    vlmo-fast convert DATASET ...                         raw data -> ViLT arrow files (see `convert -h`)
    vlmo-fast predict {vqa,embed,retrieve} ...            inference on image files and texts
    vlmo-fast bench step [--dim ...]                      train-step throughput vs the official-style baseline
    vlmo-fast bench data [--sizes 224 384 480]            images/s of each decoding path from tar shards
    vlmo-fast bench tiles --image N [--batch B]           fraction of the attention tile work that is real
    vlmo-fast plot LOG_DIR                                loss curves of a run to LOG_DIR/loss.png
    vlmo-fast pretrained                                  the official weights by name (load_path=NAME works)
    vlmo-fast download NAME ...                           fetch official weights into the cache, print the paths
"""
from __future__ import annotations

import argparse
import logging
import sys

from vlmo_fast.errors import RunError, UnknownNameError


def _train(args: argparse.Namespace) -> int:
    from vlmo_fast.train.tasks import resolve

    config = resolve(args.task, args.overrides)  # checked: a bad value stops here, before any data or model
    if args.print_config:
        print("\n".join(config.lines()))
        return 0
    from vlmo_fast.distributed import shutdown
    from vlmo_fast.launch import launch_if_needed
    from vlmo_fast.train.trainer import Trainer

    launch_if_needed(args.task, args.overrides, config)
    trainer = Trainer(config)
    trainer.fit()
    del trainer  # drops the DDP reducer before its process group goes
    shutdown()
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from vlmo_fast.train.tasks import STEP_PRESETS, TASKS, describe
    width = max(map(len, [*TASKS, *STEP_PRESETS]))
    for name in [*TASKS, *STEP_PRESETS]:
        print(f"{name:<{width}}  {describe(name)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from vlmo_fast.train.demo import run_demo
    return run_demo(args.out_dir, quick=args.quick, data_format=args.format)


def _plot(args: argparse.Namespace) -> int:
    from vlmo_fast.train.plot import plot_log
    print(plot_log(args.log_dir))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from vlmo_fast.predict import run_predict
    return run_predict(args)


def _bench(args: argparse.Namespace) -> int:
    if args.what == "data":
        from vlmo_fast.bench_data import run_data_bench
        return run_data_bench(args)
    from vlmo_fast.bench import run_bench
    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    from vlmo_fast.data.convert.cli import add_convert_parser, run_convert
    from vlmo_fast.predict import add_predict_parser
    from vlmo_fast.bench import add_bench_parser
    from vlmo_fast.bench_data import add_data_bench_parser
    from vlmo_fast.pretrained.cli import add_pretrained_parsers

    parser = argparse.ArgumentParser(prog="vlmo-fast", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train (or evaluate with test_only=True) a named task")
    p.add_argument("task", help="an official task name (task_finetune_vqa_base_image480, ...) or a tiny one "
                                "(task_mlm_itm_itc_tiny, ...)")
    p.add_argument("overrides", nargs="*", help="step presets (step200k, ...) and key=value overrides")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(run=_train)
    sub.add_parser("tasks", help="list the named tasks and step presets").set_defaults(run=_tasks)
    p = sub.add_parser("demo", help="the quick-start job: synthetic data, tiny model, train, evaluate")
    p.add_argument("out_dir", nargs="?", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="a few steps only (a smoke test)")
    p.add_argument("--format", choices=("arrow", "wds"), default="arrow", help="train from arrow files or tar shards")
    p.set_defaults(run=_demo)
    add_convert_parser(sub).set_defaults(run=run_convert)
    add_predict_parser(sub).set_defaults(run=_predict)
    bench, bench_sub = add_bench_parser(sub)
    add_data_bench_parser(bench_sub)
    bench.set_defaults(run=_bench)
    p = sub.add_parser("plot", help="plot the loss curves of a run (LOG_DIR/log.jsonl) to LOG_DIR/loss.png")
    p.add_argument("log_dir")
    p.set_defaults(run=_plot)
    add_pretrained_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return args.run(args)
    except (UnknownNameError, ValueError, FileNotFoundError, RunError) as err:
        print(f"vlmo-fast: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
