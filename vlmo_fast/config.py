"""Typed configuration: the model architecture and its presets (named like the official timm archs)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Objectives of the official `loss_names`; each enables the heads it needs (spec section 3).
OBJECTIVES = ("itm", "itc", "mlm", "textmlm", "vqa", "nlvr2", "irtr")


@dataclass(kw_only=True)
class ModelConfig:
    """Architecture of a VLMo model; the defaults are vlmo_base_patch16 at 224 px with pre-training heads."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    vl_start: int = 10                  # first layer with the VL expert (official vlffn_start_layer_index)
    patch_size: int = 16
    image_size: int = 224
    qkv_bias: bool = True               # q and v biases (the key never has one)
    layer_scale: float | None = 0.1     # gamma init of the residual branches; None = no layer scale (base_plus)
    rel_pos_bias: bool = True           # learned relative position bias (base, large)
    abs_pos_emb: bool = False           # absolute image and text position embeddings (base_plus)
    layernorm_eps: float = 1e-6
    max_text_len: int = 40              # padded text length of the official batches (Lt)
    max_text_len_of_initckpt: int = 196  # text positions of the relative-position table (L0)
    vocab_size: int = 30522
    drop_path_rate: float = 0.1         # stochastic depth, also the text-embedding dropout (as official)
    tasks: tuple[str, ...] = ("itm", "itc", "mlm")  # which heads exist (official loss_names with weight > 0)
    vqa_label_size: int = 3129

    def __post_init__(self):
        unknown = set(self.tasks) - set(OBJECTIVES)
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)}; known: {', '.join(OBJECTIVES)}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if not 0 <= self.vl_start <= self.depth:
            raise ValueError(f"vl_start {self.vl_start} outside [0, depth={self.depth}]")
        if self.rel_pos_bias and self.max_text_len > self.max_text_len_of_initckpt:
            raise ValueError(f"max_text_len {self.max_text_len} exceeds the relative-position table's text "
                             f"positions {self.max_text_len_of_initckpt}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def window(self) -> int:
        """Side of the patch grid."""
        return self.image_size // self.patch_size

    @property
    def num_image_tokens(self) -> int:
        return self.window ** 2 + 1

    @property
    def num_token_types(self) -> int:
        """Modality embeddings: text, image (and the second NLVR2 image)."""
        return 3 if "nlvr2" in self.tasks else 2

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


# The architectures of the official code (multiway_transformer.py) plus small ones for tests and CPU runs.
ARCHS: dict[str, dict] = {
    "vlmo_base_patch16": dict(embed_dim=768, depth=12, num_heads=12, vl_start=10),
    "vlmo_base_plus_patch16": dict(embed_dim=544, depth=24, num_heads=16, vl_start=21, layer_scale=None,
                                   rel_pos_bias=False, abs_pos_emb=True),
    "vlmo_large_patch16": dict(embed_dim=1024, depth=24, num_heads=16, vl_start=21),
    "vlmo_small_patch16": dict(embed_dim=128, depth=6, num_heads=8, vl_start=4),
    "vlmo_tiny_patch16": dict(embed_dim=96, depth=4, num_heads=4, vl_start=2),
}


def preset(name: str, **overrides) -> ModelConfig:
    """A named architecture with overrides, e.g. preset("vlmo_base_patch16", image_size=384, tasks=("vqa",))."""
    if name not in ARCHS:
        raise ValueError(f"unknown model arch {name!r}; known: {', '.join(ARCHS)}")
    return ModelConfig(**{**ARCHS[name], **overrides})
