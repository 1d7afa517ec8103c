"""The VLMo model: one encoder over the packed layout for the text, image and fused passes, plus the heads.

Parameter names are the official ones, so an official state dict loads key for key (vlmo_fast.checkpoint).
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vlmo_fast.config import ModelConfig
from vlmo_fast.ops.attention_bias import SlotIndex, layer_bias, slot_index
from vlmo_fast.ops.layout import PackedLayout
from vlmo_fast.ops.packing import make_layout, pack_text
from vlmo_fast.ops.relpos import table_rows
from .block import IMAGE_EXPERT, TEXT_EXPERT, VL_EXPERT, LayerInput
from .draws import PassDraws, draw_pass
from .embeddings import TextEmbeddings
from .heads import ITCHead, ITMHead, MLMHead, Pooler, classifier
from .transformer import MultiWayTransformer


@dataclass
class Encoding:
    """Result of one pass over the packed rows of a batch: every row, or only the rows asked for (in their order)."""

    layout: PackedLayout
    hidden: Tensor                  # (T or R, D) output of the last block (before the final norm)
    feats: Tensor                   # (T or R, D) after the final norm
    vl_hidden: Tensor | None = None  # the VL-FFN branch of a unimodal pass, before / after the norm
    vl_feats: Tensor | None = None
    layers: list[Tensor] | None = None     # every block's output on the main path, when asked for
    vl_layers: list[Tensor] | None = None  # blocks vl_start.. of the VL-FFN branch


def cls_rows(layout: PackedLayout) -> Tensor:
    """(P,) the row of each pair's [CLS]: its text [CLS] if the pass has text, else its image [CLS]."""
    return (layout.text_start if layout.num_text_rows else layout.image_start).long()


class Route(enum.Enum):
    """Which experts a pass's rows go to (spec 1.3)."""

    TEXT = "text"    # text-only pass: the language expert (the VL expert from vl_start in the VL-FFN branch)
    IMAGE = "image"  # image-only pass: the vision expert
    FUSED = "fused"  # text and images: language / vision experts below vl_start, the VL expert from it


def _route_of(layout: PackedLayout) -> Route:
    if layout.num_text_rows and layout.max_image:
        return Route.FUSED
    return Route.TEXT if layout.num_text_rows else Route.IMAGE


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
    def plan(self, *, text_lens: Tensor | None = None, num_images: int = 0,
             padded_text_len: int | None = None) -> PackedLayout:
        """The packed layout of one pass, planned before it runs: text segments of `text_lens` (B,) real tokens
        and/or `num_images` images (B of them in a fused pass).  padded_text_len keeps each text segment's padded
        positions as query-only rows (the official outputs at every position)."""
        if text_lens is None and not num_images:
            raise ValueError("a pass needs text_lens, images or both")
        if text_lens is not None and num_images and num_images != text_lens.shape[0]:
            raise ValueError(f"{text_lens.shape[0]} texts but {num_images} images")
        lens = torch.zeros(num_images, dtype=torch.int32) if text_lens is None else text_lens
        return make_layout(lens, self.cfg.num_image_tokens if num_images else 0, padded_text_len)

    def pass_draws(self, layout: PackedLayout, vl_branch: bool = False,
                   generator: torch.Generator | None = None) -> PassDraws | None:
        """The random decisions of one training pass over `layout` (model/draws.py), from `generator` (the
        global one when None).  None when nothing is random (evaluation, or a rate of 0)."""
        cfg = self.cfg
        if not self.training or cfg.drop_path_rate == 0.0:
            return None
        route = _route_of(layout)
        rates = [blk.drop_path for blk in self.transformer.blocks]
        groups = [len(self._groups(layout, route, i)) for i in range(cfg.depth)]
        return draw_pass(rates, groups, cfg.vl_start, vl_branch and route is not Route.FUSED, layout.num_pairs,
                         layout.num_text_rows, cfg.embed_dim, cfg.drop_path_rate, layout.device, generator)

    def _groups(self, layout: PackedLayout, route: Route, layer: int) -> list[tuple[int, int, int]]:
        """Row groups of each expert: text rows to the language expert, image rows to the vision expert, every
        row to the VL expert from layer vl_start on in the fused pass (and the VL-FFN branch)."""
        T, Tt = layout.num_rows, layout.num_text_rows
        if route is Route.TEXT:
            return [(0, T, TEXT_EXPERT)]
        if route is Route.IMAGE:
            return [(0, T, IMAGE_EXPERT)]
        if layer >= self.cfg.vl_start:
            return [(0, T, VL_EXPERT)]
        return [(0, Tt, TEXT_EXPERT), (Tt, T, IMAGE_EXPERT)]

    def _slot_index(self, layout: PackedLayout) -> SlotIndex | None:
        """The table row of every (query slot, key slot) of the pass (None without a bias table)."""
        table = self.relative_position_bias_table
        if table is None:
            return None
        return slot_index(layout, self.cfg.window, self.cfg.max_text_len_of_initckpt, table.shape[0])

    def _layer_inputs(self, layout: PackedLayout, route: Route, layers: range, draws: Tensor | None,
                      index: SlotIndex | None) -> list[LayerInput]:
        """Per layer: the layout, its relative position bias (gathered here from the pass's slot index, dense per
        slot pair; None without a bias table), its expert row groups and its stochastic-depth draws."""
        cfg, table = self.cfg, self.relative_position_bias_table

        def bias(layer: int):
            return None if index is None else layer_bias(table, layer * cfg.num_heads, cfg.num_heads, index)
        return [LayerInput(layout, bias(i), self._groups(layout, route, i), None if draws is None else draws[i])
                for i in layers]

    def embed(self, layout: PackedLayout, text_ids: Tensor | None, images: Tensor | None,
              image_token_type: int | Tensor, text_keep: Tensor | None = None) -> Tensor:
        """Packed input rows (T, D): text embeddings of the layout's text rows, then every image's tokens."""
        rows = []
        if text_ids is not None:
            ids = pack_text(text_ids, layout)  # (Tt,)
            pair = layout.row_pair[: layout.num_text_rows].long()
            pos = torch.arange(layout.num_text_rows, device=ids.device) - layout.text_start.long()[pair]
            rows.append(self.text_embeddings(ids, pos, text_keep) + self.token_type_embeddings.weight[0])
        if images is not None:
            img = self.transformer.visual_embed(images)  # (B, Ni, D)
            if isinstance(image_token_type, Tensor):  # one modality index per pair (NLVR2's two images)
                img = img + self.token_type_embeddings(image_token_type.to(img.device))[:, None]
            else:
                img = img + self.token_type_embeddings.weight[image_token_type]
            rows.append(img.reshape(-1, img.shape[-1]))
        return torch.cat(rows) if len(rows) > 1 else rows[0]

    def encode(self, layout: PackedLayout, *, text_ids: Tensor | None = None, images: Tensor | None = None,
               image_token_type: int | Tensor = 1, rows: Tensor | None = None, vl_branch: bool = False,
               return_layers: bool = False, draws: PassDraws | None = None) -> Encoding:
        """One pass over a planned layout (`plan`): fused (text and images), text-only or image-only.

        text_ids (B, Lt) padded token ids (their real lengths are the layout's); images (B, 3, S, S) with modality
        index image_token_type (an int, or a (B,) tensor of one index per pair).  rows: the packed rows whose
        output is read (e.g. cls_rows(layout)); the last layer computes only those and the encoding holds them
        in that order.  vl_branch also runs, for a unimodal pass, the VL-FFN branch from layer vl_start (the
        official infer_text/infer_image).  draws: the pass's random decisions (pass_draws); in training without
        them the model draws from the global generator.
        """
        self._check_pass(layout, text_ids, images, rows, return_layers)
        route = _route_of(layout)
        if draws is None:
            draws = self.pass_draws(layout, vl_branch)
        x = self.embed(layout, text_ids, images, image_token_type, None if draws is None else draws.text_keep)
        L, s = self.cfg.depth, self.cfg.vl_start
        main = [None] * 2 if draws is None else draws.drop_path.unbind(0)
        blocks = self.transformer
        index = self._slot_index(layout)  # once per pass, shared by every layer and the VL-FFN branch
        layers: list[Tensor] | None = [] if return_layers else None
        x_low = blocks.run_blocks(x, self._layer_inputs(layout, route, range(0, s), main[0], index), 0, layers,
                                  rows if s == L else None)
        x_top = blocks.run_blocks(x_low, self._layer_inputs(layout, route, range(s, L), main[0], index), s, layers,
                                  rows)
        enc = Encoding(layout, x_top, blocks.norm(x_top), layers=layers)
        if vl_branch and route is not Route.FUSED:
            enc.vl_layers = [] if return_layers else None
            branch = self._layer_inputs(layout, Route.FUSED, range(s, L), main[1], index)
            vl = blocks.run_blocks(x_low, branch, s, enc.vl_layers, rows)
            enc.vl_hidden, enc.vl_feats = vl, blocks.norm(vl)
        return enc

    def _check_pass(self, layout: PackedLayout, text_ids: Tensor | None, images: Tensor | None,
                    rows: Tensor | None, return_layers: bool) -> None:
        if text_ids is None and images is None:
            raise ValueError("encode needs text_ids, images or both")
        P = layout.num_pairs
        for name, t in (("text_ids", text_ids), ("images", images)):
            if t is not None and t.shape[0] != P:
                raise ValueError(f"{name} has {t.shape[0]} rows but the layout plans {P} pairs")
        if (text_ids is None) != (layout.num_text_rows == 0) or (images is None) != (layout.max_image == 0):
            raise ValueError("the layout was planned for other inputs (text and images must match plan())")
        if rows is not None and return_layers:
            raise ValueError("return_layers needs every row: pass rows=None")
