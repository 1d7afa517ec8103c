"""The VLMo model: one encoder over the packed layout for the text, image and fused passes, plus the heads.

Parameter names are the official ones, so an official state dict loads key for key (vlmo_fast.checkpoint).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vlmo_fast.config import ModelConfig
from vlmo_fast.ops.attention_bias import layer_bias, slot_index
from vlmo_fast.ops.layout import PackedLayout
from vlmo_fast.ops.packing import make_layout, pack_text
from vlmo_fast.ops.relpos import table_rows
from .block import IMAGE_EXPERT, TEXT_EXPERT, VL_EXPERT, LayerInput
from .embeddings import TextEmbeddings
from .heads import ITCHead, ITMHead, MLMHead, Pooler, classifier
from .transformer import MultiWayTransformer


@dataclass
class Encoding:
    """Result of one pass over the packed rows of a batch."""

    layout: PackedLayout
    hidden: Tensor                  # (T, D) output of the last block (before the final norm)
    feats: Tensor                   # (T, D) after the final norm
    vl_hidden: Tensor | None = None  # (T, D) the VL-FFN branch of a unimodal pass, before / after the norm
    vl_feats: Tensor | None = None
    layers: list[Tensor] | None = None     # every block's output on the main path, when asked for
    vl_layers: list[Tensor] | None = None  # blocks vl_start.. of the VL-FFN branch

    def first_rows(self, x: Tensor) -> Tensor:
        """(P, D): the first row of each pair (the text [CLS] if the pass has text, else the image [CLS])."""
        return x.index_select(0, first_row_index(self.layout))


def first_row_index(layout: PackedLayout) -> Tensor:
    """(P,) the row of each pair's [CLS]: its text [CLS] if the pass has text, else its image [CLS]."""
    return (layout.text_start if layout.num_text_rows else layout.image_start).long()


class VLMo(nn.Module):
    """VLMo with Mixture-of-Modality-Experts, on packed variable-length batches."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        self.transformer = MultiWayTransformer(cfg)
        self.relative_position_bias_table = None
        if cfg.rel_pos_bias:
            rows = table_rows(cfg.window, cfg.max_text_len_of_initckpt)
            self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, cfg.num_heads * cfg.depth))
        self.text_embeddings = TextEmbeddings(cfg)
        self.token_type_embeddings = nn.Embedding(cfg.num_token_types, D)
        self.pooler = Pooler(D)
        tasks = set(cfg.tasks)
        if tasks & {"mlm", "textmlm"}:
            self.mlm_score = MLMHead(D, cfg.vocab_size)
        if "itm" in tasks:
            self.itm_score = ITMHead(D)
        if tasks & {"itc", "irtr"}:
            self.itc_text_proj = ITCHead(D)
            self.itc_image_proj = ITCHead(D)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        if "itc" in tasks:
            self.itc_vl_text_proj = ITCHead(D)
            self.itc_vl_image_proj = ITCHead(D)
            self.logit_vl_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        if "vqa" in tasks:
            self.vqa_classifier = classifier(D, 2 * D, cfg.vqa_label_size)
        if "nlvr2" in tasks:
            self.nlvr2_classifier = classifier(2 * D, 2 * D, 2)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official initialisation (spec 1.5): backbone Linear weights trunc_normal(.02), the rest of the
        Linear/Embedding weights N(0, .02), biases 0, LayerNorm 1/0, the patch conv at PyTorch's default."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if name.startswith("transformer."):
                    nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
                else:
                    m.weight.normal_(0.0, 0.02)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Embedding):
                m.weight.normal_(0.0, 0.02)
            elif isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
        t = self.transformer
        nn.init.trunc_normal_(t.cls_token, std=0.02, a=-2.0, b=2.0)
        if t.pos_embed is not None:
            nn.init.trunc_normal_(t.pos_embed, std=0.02, a=-2.0, b=2.0)
        for blk in t.blocks:
            if blk.attn.q_bias is not None:
                blk.attn.q_bias.zero_()
                blk.attn.v_bias.zero_()
            for g in (blk.gamma_1, blk.gamma_2):
                if g is not None:
                    g.fill_(self.cfg.layer_scale)
        if self.relative_position_bias_table is not None:
            self.relative_position_bias_table.zero_()
        for name in ("logit_scale", "logit_vl_scale"):
            if hasattr(self, name):
                getattr(self, name).fill_(math.log(1 / 0.07))
        if hasattr(self, "mlm_score"):
            self.mlm_score.bias.zero_()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Released checkpoints carry the three relative-position index matrices; they are derived, not state.
        for key in ("relative_position_index", "text_relative_position_index", "text_imag_relative_position_index"):
            state_dict.pop(prefix + key, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ----------------------------------------------------------------------------------------------------------
    # The encoder
    def _groups(self, layout: PackedLayout, route: str, layer: int) -> list[tuple[int, int, int]]:
        """Row groups of each expert: text rows to the language expert, image rows to the vision expert, every
        row to the VL expert from layer vl_start on in the fused pass."""
        T, Tt = layout.num_rows, layout.num_text_rows
        if route == "text":
            return [(0, T, TEXT_EXPERT)]
        if route == "image":
            return [(0, T, IMAGE_EXPERT)]
        if layer >= self.cfg.vl_start:
            return [(0, T, VL_EXPERT)]
        return [(0, Tt, TEXT_EXPERT), (Tt, T, IMAGE_EXPERT)]

    def _layer_inputs(self, layout: PackedLayout, route: str, layers: range) -> list[LayerInput]:
        """Per layer: the layout, its relative position bias (gathered once here, dense per slot pair) and its
        expert row groups."""
        cfg, table = self.cfg, self.relative_position_bias_table
        if table is None:
            return [LayerInput(layout, None, self._groups(layout, route, i)) for i in layers]
        index = slot_index(layout, cfg.window, cfg.max_text_len_of_initckpt, table.shape[0])
        return [LayerInput(layout, layer_bias(table, i * cfg.num_heads, cfg.num_heads, index),
                           self._groups(layout, route, i)) for i in layers]

    def embed(self, layout: PackedLayout, text_ids: Tensor | None, images: Tensor | None,
              image_token_type: int | Tensor) -> Tensor:
        """Packed input rows (T, D): text embeddings of the layout's text rows, then every image's tokens."""
        rows = []
        if text_ids is not None:
            ids = pack_text(text_ids, layout)  # (Tt,)
            pair = layout.row_pair[: layout.num_text_rows].long()
            pos = torch.arange(layout.num_text_rows, device=ids.device) - layout.text_start.long()[pair]
            rows.append(self.text_embeddings(ids, pos) + self.token_type_embeddings.weight[0])
        if images is not None:
            img = self.transformer.visual_embed(images)  # (B, Ni, D)
            if isinstance(image_token_type, Tensor):  # one modality index per pair (NLVR2's two images)
                img = img + self.token_type_embeddings(image_token_type.to(img.device))[:, None]
            else:
                img = img + self.token_type_embeddings.weight[image_token_type]
            rows.append(img.reshape(-1, img.shape[-1]))
        return torch.cat(rows) if len(rows) > 1 else rows[0]

    def encode(self, *, text_ids: Tensor | None = None, text_lens: Tensor | None = None,
               images: Tensor | None = None, image_token_type: int | Tensor = 1, keep_padded_text: bool = False,
               vl_branch: bool = False, return_layers: bool = False,
               output_rows: Callable[[PackedLayout], Tensor] | None = None) -> Encoding:
        """One pass: fused (text and images), text-only or image-only.

        text_ids (B, Lt) padded token ids with real lengths text_lens (B,); images (B, 3, S, S) with modality
        index image_token_type (an int, or a (B,) tensor of one index per pair).
        keep_padded_text keeps the padded text positions as query-only rows (the official outputs at every
        position); otherwise padding is dropped.  vl_branch also runs, for a unimodal pass, the VL-FFN branch
        from layer vl_start (the official infer_text/infer_image).  output_rows(layout) names the rows whose final
        output will be read (e.g. the [CLS] rows); the last layer then computes only those (the other rows of
        `hidden`/`feats` hold no meaningful values).
        """
        if text_ids is None and images is None:
            raise ValueError("encode needs text_ids, images or both")
        if text_ids is not None and text_lens is None:
            raise ValueError("text_ids need their real lengths text_lens")
        B = text_ids.shape[0] if text_ids is not None else images.shape[0]
        if text_ids is not None and images is not None and images.shape[0] != B:
            raise ValueError(f"{B} texts but {images.shape[0]} images")
        cfg = self.cfg
        device = (text_ids if text_ids is not None else images).device
        lens = torch.zeros(B, dtype=torch.int32) if text_ids is None else text_lens
        layout = make_layout(lens.to(device), cfg.num_image_tokens if images is not None else 0,
                             text_ids.shape[1] if keep_padded_text and text_ids is not None else None)
        route = "vl" if text_ids is not None and images is not None else ("text" if images is None else "image")
        x = self.embed(layout, text_ids, images, image_token_type)

        L, s = cfg.depth, cfg.vl_start
        run_branch = vl_branch and route != "vl"
        layers: list[Tensor] | None = [] if return_layers else None
        blocks = self.transformer
        out_rows = None if output_rows is None else output_rows(layout).to(x.device)
        if s == L:  # no layer from vl_start on: the last layer is a low one
            x_top = x_low = blocks.run_blocks(x, self._layer_inputs(layout, route, range(0, s)), 0, layers, out_rows)
        else:
            x_low = blocks.run_blocks(x, self._layer_inputs(layout, route, range(0, s)), 0, layers)
            x_top = blocks.run_blocks(x_low, self._layer_inputs(layout, route, range(s, L)), s, layers, out_rows)
        norm = blocks.norm
        enc = Encoding(layout, x_top, norm(x_top), layers=layers)
        if run_branch:
            enc.vl_layers = [] if return_layers else None
            vl = blocks.run_blocks(x_low, self._layer_inputs(layout, "vl", range(s, L)), s, enc.vl_layers, out_rows)
            enc.vl_hidden, enc.vl_feats = vl, norm(vl)
        return enc
