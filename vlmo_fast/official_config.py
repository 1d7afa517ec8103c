"""The official config dict (sacred `config.py` keys) and its mapping onto ModelConfig; vlmo_fast.compat.config
re-exports them for the official surface."""
from __future__ import annotations

from vlmo_fast.config import ARCHS, OBJECTIVES, ModelConfig
from vlmo_fast.errors import UnknownNameError
from vlmo_fast.run_config import SECTION_OF, is_official, official_default

# Defaults of the official config.py (spec section 5); missing keys of a user's dict take these values.  They are
# the defaults of the run config's official keys (vlmo_fast.run_config), where vlmo-fast's own default differs
# (precision) the official one.
OFFICIAL_DEFAULTS: dict = {name: official_default(name) for name in SECTION_OF if is_official(name)}

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
    bad = sorted(set(out["loss_names"]) - set(OBJECTIVES))
    if bad:
        raise UnknownNameError(f"unknown loss_names {bad}; known: {list(OBJECTIVES)}")
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
    tasks = tuple(t for t in OBJECTIVES if config["loss_names"].get(t, 0) > 0)
    if "textmlm" in tasks:
        fields["vl_start"] = fields["depth"]  # stage-2 text model: no VL expert anywhere (as official)
    return ModelConfig(**fields, image_size=config["image_size"], max_text_len=config["max_text_len"],
                       max_text_len_of_initckpt=config["max_text_len_of_initckpt"],
                       vocab_size=config["vocab_size"], drop_path_rate=config["drop_path_rate"], tasks=tasks,
                       vqa_label_size=config["vqav2_label_size"])
