"""Drop-in replacement of the official `VLMo` LightningModule's model surface (infer* methods, batch and
result dicts, official config dict), as a thin layer over the core model."""
from __future__ import annotations

import torch
from torch import Tensor

from vlmo_fast.model.heads import l2_normalize
from vlmo_fast.model.vlmo import VLMo as CoreVLMo, Encoding
from vlmo_fast.ops.packing import make_layout_from_mask, unpack, unpack_text
from . import objectives
from .config import full_config, model_config


class VLMo(CoreVLMo):
    """The official VLMo module's model: same constructor config dict, same submodule and parameter names, same
    infer / infer_text / infer_image / *_ft / infer_text_mlm methods returning the official dicts (every position of
    the padded batch).  Per-block hidden states: pass `return_hidden=True` to an infer method (keys `hidden`, and
    `vlffn_hidden` for the VL-FFN branch)."""

    def __init__(self, config: dict, arch: dict | None = None, trust_checkpoint: bool = False):
        config = full_config(config)
        super().__init__(model_config(config, arch))
        self.config = config
        self.current_tasks = [t for t, w in config["loss_names"].items() if w > 0]
        if config["load_path"]:
            from vlmo_fast.checkpoint.load import load_official
            from vlmo_fast.pretrained.resolve import resolve_load_path
            config["load_path"] = resolve_load_path(config["load_path"])  # a registered name -> its cached file
            self.load_report = load_official(self, config, trusted=trust_checkpoint)

    # The official modules kept these as plain attributes; some callers read them.
    @property
    def vlffn_start_layer_index(self) -> int:
        return self.cfg.vl_start

    @property
    def num_layers(self) -> int:
        return self.cfg.depth

    # ----------------------------------------------------------------------------------------------------------
    def _text(self, batch: dict, mask_text: bool) -> tuple[Tensor, Tensor | None, Tensor]:
        key = "_mlm" if mask_text else ""
        return batch[f"text_ids{key}"], batch.get(f"text_labels{key}"), batch["text_masks"]

    def _text_layout(self, masks: Tensor, with_images: bool):
        """Every padded text position kept as a row (the official outputs); a mask that is not 1...1 0...0 is
        refused naming its sample."""
        return make_layout_from_mask(masks, self.cfg.num_image_tokens if with_images else 0, keep_padded=True)

    @staticmethod
    def _image(batch: dict, image_token_type_idx: int) -> Tensor:
        key = f"image_{image_token_type_idx - 1}"
        return batch[key if key in batch else "image"][0]

    @staticmethod
    def _unpack_text(enc: Encoding, x: Tensor, B: int) -> Tensor:
        return unpack_text(x, enc.layout, enc.layout.max_text_q)  # every segment kept its padded rows

    def _unpack_image(self, enc: Encoding, x: Tensor, B: int) -> Tensor:
        return x.view(B, self.cfg.num_image_tokens, -1)

    @staticmethod
    def _hidden(ret: dict, layers: list[Tensor] | None, unpack, key: str) -> None:
        if layers is not None:
            ret[key] = [unpack(h) for h in layers]

    # ----------------------------------------------------------------------------------------------------------
    def infer(self, batch: dict, mask_text: bool = False, mask_image: bool = False, image_token_type_idx: int = 1,
              image_embeds=None, image_masks=None, return_hidden: bool = False) -> dict:
        """Fusion pass over [text; image] (official `infer`)."""
        ids, labels, masks = self._text(batch, mask_text)
        img = self._image(batch, image_token_type_idx)
        layout = self._text_layout(masks, with_images=True)
        enc = self.encode(layout, text_ids=ids, images=img, image_token_type=image_token_type_idx,
                          return_layers=return_hidden)
        Lt = ids.shape[1]

        def full(x):  # packed rows -> (B, Lt + Ni, D)
            return torch.cat(unpack(x, layout, Lt), 1)

        x = full(enc.feats)
        ret = {
            "text_feats": x[:, :Lt], "image_feats": x[:, Lt:], "cls_feats": self.pooler(x), "raw_cls_feats": x[:, 0],
            "image": img, "text_labels": labels, "text_ids": ids, "text_masks": masks,
        }
        self._hidden(ret, enc.layers, full, "hidden")
        return ret

    def _infer_text(self, batch: dict, mask_text: bool, vl_branch: bool, project: bool, return_hidden: bool) -> dict:
        ids, labels, masks = self._text(batch, mask_text)
        enc = self.encode(self._text_layout(masks, with_images=False), text_ids=ids, vl_branch=vl_branch,
                          return_layers=return_hidden)
        B = ids.shape[0]
        feats = self._unpack_text(enc, enc.feats, B)
        ret = {
            "text_feats": feats, "image_feats": None,
            "cls_feats": l2_normalize(self.itc_text_proj(feats[:, 0])) if project else None,
            "cls_vlffn_feats": None,
            "raw_cls_feats": self._unpack_text(enc, enc.hidden, B)[:, 0],
            "image_masks": None, "text_labels": labels, "text_ids": ids, "text_masks": masks,
        }
        if vl_branch:
            ret["cls_vlffn_feats"] = l2_normalize(self.itc_vl_text_proj(self._unpack_text(enc, enc.vl_feats, B)[:, 0]))
        self._hidden(ret, enc.layers, lambda h: self._unpack_text(enc, h, B), "hidden")
        self._hidden(ret, enc.vl_layers, lambda h: self._unpack_text(enc, h, B), "vlffn_hidden")
        return ret

    def _infer_image(self, batch: dict, image_token_type_idx: int, vl_branch: bool, return_hidden: bool) -> dict:
        img = self._image(batch, image_token_type_idx)
        enc = self.encode(self.plan(num_images=img.shape[0]), images=img, image_token_type=image_token_type_idx,
                          vl_branch=vl_branch, return_layers=return_hidden)
        B = img.shape[0]
        feats = self._unpack_image(enc, enc.feats, B)
        ret = {
            "text_feats": None, "image_feats": feats, "cls_feats": l2_normalize(self.itc_image_proj(feats[:, 0])),
            "cls_vlffn_feats": None, "raw_cls_feats": self._unpack_image(enc, enc.hidden, B)[:, 0],
            "image_masks": torch.ones(B, feats.shape[1], dtype=torch.long, device=feats.device),
            "text_labels": None, "text_ids": None, "text_masks": None,
        }
        if vl_branch:
            vl_cls = self._unpack_image(enc, enc.vl_feats, B)[:, 0]
            ret["cls_vlffn_feats"] = l2_normalize(self.itc_vl_image_proj(vl_cls))
        self._hidden(ret, enc.layers, lambda h: self._unpack_image(enc, h, B), "hidden")
        self._hidden(ret, enc.vl_layers, lambda h: self._unpack_image(enc, h, B), "vlffn_hidden")
        return ret

    def infer_text(self, batch: dict, mask_text: bool = False, return_hidden: bool = False) -> dict:
        """Text-only pass plus the VL-FFN branch from vl_start (official `infer_text`)."""
        return self._infer_text(batch, mask_text, vl_branch=True, project=True, return_hidden=return_hidden)

    def infer_text_ft(self, batch: dict, mask_text: bool = False, return_hidden: bool = False) -> dict:
        return self._infer_text(batch, mask_text, vl_branch=False, project=True, return_hidden=return_hidden)

    def infer_text_mlm(self, batch: dict, mask_text: bool = False, return_hidden: bool = False) -> dict:
        return self._infer_text(batch, mask_text, vl_branch=False, project=False, return_hidden=return_hidden)

    def infer_image(self, batch: dict, mask_image: bool = False, image_token_type_idx: int = 1, image_embeds=None,
                    image_masks=None, return_hidden: bool = False) -> dict:
        """Image-only pass plus the VL-FFN branch from vl_start (official `infer_image`)."""
        return self._infer_image(batch, image_token_type_idx, vl_branch=True, return_hidden=return_hidden)

    def infer_image_ft(self, batch: dict, mask_image: bool = False, image_token_type_idx: int = 1,
                       image_embeds=None, image_masks=None, return_hidden: bool = False) -> dict:
        return self._infer_image(batch, image_token_type_idx, vl_branch=False, return_hidden=return_hidden)

    def forward(self, batch: dict) -> dict:
        """As the official forward: the enabled objectives' outputs, or `infer(batch)` with none."""
        if not self.current_tasks:
            return self.infer(batch)
        return objectives.run_tasks(self, batch, self.current_tasks)
