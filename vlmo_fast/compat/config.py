"""The official config dict (sacred `config.py` keys) and its mapping onto ModelConfig."""
from __future__ import annotations

from vlmo_fast.config import ARCHS, TASKS, ModelConfig
from vlmo_fast.errors import UnknownNameError

# Defaults of the official config.py (spec section 5); missing keys of a user's dict take these values.
OFFICIAL_DEFAULTS: dict = {
    "exp_name": "vlmo", "seed": 1, "datasets": ["coco", "vg", "sbu", "gcc"],
    "loss_names": {"itm": 1, "itc": 1, "mlm": 1, "textmlm": 0, "vqa": 0, "nlvr2": 0, "irtr": 0},
    "batch_size": 1024, "train_transform_keys": ["square_transform_randaug"],
    "val_transform_keys": ["square_transform"], "image_size": 224, "draw_false_image": 0, "image_only": False,
    "text_only": False, "vqav2_label_size": 3129, "max_text_len": 40, "max_text_len_of_initckpt": 196,
    "tokenizer": "bert-base-uncased", "vocab_size": 30522, "whole_word_masking": False, "mlm_prob": 0.15,
    "draw_false_text": 0, "model_arch": "vlmo_base_patch16", "drop_path_rate": 0.1, "optim_type": "adamw",
    "learning_rate": 1e-4, "weight_decay": 0.01, "decay_power": 1, "max_epoch": 100, "max_steps": 200000,
    "warmup_steps": 0.1, "end_lr": 0, "lr_mult": 1, "get_recall_metric": False, "get_recall_rerank_metric": False,
    "k_test": 32, "resume_from": None, "fast_dev_run": False, "val_check_interval": 1.0, "test_only": False,
    "use_sharded_training": False, "resume_during_training": False, "data_root": "", "log_dir": "result",
    "per_gpu_batchsize": 4, "num_gpus": 1, "num_nodes": 1, "load_path": "", "num_workers": 8, "precision": 16,
}

# The keyword arguments of the official MultiWayTransformer, and the ModelConfig field each one sets.
ARCH_KEYS = {
    "embed_dim": "embed_dim", "depth": "depth", "num_heads": "num_heads", "mlp_ratio": "mlp_ratio",
    "vlffn_start_layer_index": "vl_start", "use_abs_pos_emb": "abs_pos_emb",
    "need_relative_position_embed": "rel_pos_bias", "layer_scale_init_values": "layer_scale",
    "qkv_bias": "qkv_bias", "patch_size": "patch_size", "img_size": "image_size", "layernorm_eps": "layernorm_eps",
}
_REQUIRED_ARCH_KEYS = ("embed_dim", "depth", "num_heads", "mlp_ratio", "vlffn_start_layer_index",
                       "use_abs_pos_emb", "need_relative_position_embed", "layer_scale_init_values")


def full_config(config: dict) -> dict:
    """The official defaults updated with `config`; unknown keys are an error."""
    unknown = sorted(set(config) - set(OFFICIAL_DEFAULTS))
    if unknown:
        raise UnknownNameError(f"unknown config keys {unknown}; the official keys are {sorted(OFFICIAL_DEFAULTS)}")
    out = {**OFFICIAL_DEFAULTS, **config}
    out["loss_names"] = {**OFFICIAL_DEFAULTS["loss_names"], **config.get("loss_names", {})}
    bad = sorted(set(out["loss_names"]) - set(TASKS))
    if bad:
        raise UnknownNameError(f"unknown loss_names {bad}; known: {list(TASKS)}")
    return out


def model_config(config: dict, arch: dict | None = None) -> ModelConfig:
    """ModelConfig of an official config dict: the preset named by model_arch, or `arch` (official
    MultiWayTransformer keyword arguments) when model_arch names no preset."""
    config = full_config(config)
    name = config["model_arch"]
    if arch is not None:
        unknown = sorted(set(arch) - set(ARCH_KEYS))
        if unknown:
            raise UnknownNameError(f"unknown arch keys {unknown}; known: {sorted(ARCH_KEYS)}")
        missing = [k for k in _REQUIRED_ARCH_KEYS if k not in arch]
        if missing:
            raise UnknownNameError(f"arch lacks {missing}")
        fields = {ARCH_KEYS[k]: v for k, v in arch.items() if k != "img_size"}
    elif name in ARCHS:
        fields = dict(ARCHS[name])
    elif name == "vit_large_patch16_224":
        # The official task_mlm_itm_itc_large names a plain timm ViT by mistake; the intended model is this one.
        fields = dict(ARCHS["vlmo_large_patch16"])
    else:
        raise ValueError(f"model_arch {name!r} is no known preset ({', '.join(ARCHS)}); pass its architecture as "
                         f"arch={{...}} with the official MultiWayTransformer keyword arguments")
    tasks = tuple(t for t in TASKS if config["loss_names"].get(t, 0) > 0)
    if "textmlm" in tasks:
        fields["vl_start"] = fields["depth"]  # stage-2 text model: no VL expert anywhere (as official)
    return ModelConfig(**fields, image_size=config["image_size"], max_text_len=config["max_text_len"],
                       max_text_len_of_initckpt=config["max_text_len_of_initckpt"],
                       vocab_size=config["vocab_size"], drop_path_rate=config["drop_path_rate"], tasks=tasks,
                       vqa_label_size=config["vqav2_label_size"])
