"""Overrides of a tiny training run for tests: a tiny model, small batches, a small evaluation."""

TINY = ["model_arch=vlmo_tiny_patch16", "image_size=64", "max_text_len=24", "per_gpu_batchsize=4", "batch_size=4",
        "eval_limit=8", "eval_batch_size=8", "num_workers=0", "log_every=1"]
