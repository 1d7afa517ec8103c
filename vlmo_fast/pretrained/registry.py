"""The released VLMo weights by name: every checkpoint of the official README (microsoft/unilm vlmo/README.md),
with its file, URL, architecture, image size, heads and the task config it pairs with.

No official hash is published, so none is pinned here: the cache records each file's sha256 at its first download
and checks it on every later use (vlmo_fast.pretrained.cache).
"""
from __future__ import annotations

from dataclasses import dataclass

from vlmo_fast.errors import UnknownNameError

OFFICIAL_BASE_URL = "https://conversationhub.blob.core.windows.net/beit-share-public"


@dataclass(frozen=True, kw_only=True)
class PretrainedWeight:
    """One released checkpoint file and how to build the model it fits."""

    name: str                       # the registry name (also the file stem, except for the BEiT file)
    file: str                       # the official file name, kept in the cache and appended to a mirror URL
    url: str                        # the official location
    arch: str                       # a preset of vlmo_fast.config.ARCHS
    image_size: int
    heads: tuple[str, ...]          # the objectives whose heads the file holds (official loss_names)
    task: str | None                # the official task config that produced the weight (None: none published)
    init_from: str | None = None    # the registry name the fine-tuning started from
    result: str = ""                # the paper result of the official README
    max_text_len: int = 40          # text positions of the model the file was trained with
    beit: bool = False              # a BEiT (stage 1) file: converted for text pre-training when loaded

    @property
    def loss_names(self) -> dict[str, int]:
        return {t: 1 for t in self.heads}


PRETRAINED: dict[str, PretrainedWeight] = {}


def register(weight: PretrainedWeight) -> PretrainedWeight:
    """Add a weight (a released one, or a private one served by a mirror) under its name."""
    PRETRAINED[weight.name] = weight
    return weight


def get_weight(name: str) -> PretrainedWeight:
    if name not in PRETRAINED:
        raise UnknownNameError(f"unknown pretrained weight {name!r}; known: {', '.join(PRETRAINED)} "
                               f"(`vlmo-fast pretrained` lists them)")
    return PRETRAINED[name]


_ARCHS = {"base": "vlmo_base_patch16", "base_plus": "vlmo_base_plus_patch16", "large": "vlmo_large_patch16"}
_PRETRAIN_PARAMS = {"base": "175M", "base_plus": "167M", "large": "562M"}
_VQA = {"base": "76.6", "base_plus": "78.5", "large": "79.9"}              # test-dev
_NLVR2 = {"base": "83.3", "base_plus": "85.1", "large": "86.9"}            # test-P
_COCO = {"base": ("74.8", "57.2"), "base_plus": ("76.3", "58.6"), "large": ("78.2", "60.6")}    # TR@1, IR@1
_F30K = {"base": ("92.3", "79.3"), "base_plus": ("93.2", "81.8"), "large": ("95.3", "84.5")}
# The README's F30K fine-tuning of base and large starts from their COCO weights, base_plus from the pre-trained.
_F30K_INIT = {"base": "vlmo_base_patch16_384_coco", "base_plus": "vlmo_base_plus_patch16_224",
              "large": "vlmo_large_patch16_384_coco"}


def _vlmo(name: str, size: str, **kw) -> None:
    file = f"{name}.pt"
    register(PretrainedWeight(name=name, file=file, url=f"{OFFICIAL_BASE_URL}/vlmo/{file}", arch=_ARCHS[size],
                              **kw))


def _register_official() -> None:
    for size in _ARCHS:
        pre = f"vlmo_{size}_patch16_224"
        _vlmo(pre, size, image_size=224, heads=("itm", "itc", "mlm"), task=f"task_mlm_itm_itc_{size}",
              init_from=f"{pre}_stage2", result=f"pre-trained, {_PRETRAIN_PARAMS[size]} parameters")
        # No official text pre-training config for large is published (its stage-2 weight is).
        _vlmo(f"{pre}_stage2", size, image_size=224, heads=("textmlm",), max_text_len=196,
              task=f"task_textmlm_{size}" if size != "large" else None,
              init_from="beit_base_patch16_224_pt22k_ft22kto1k" if size == "base" else None,
              result="stage 2 (text pre-training)")
    for size in _ARCHS:
        pre = f"vlmo_{size}_patch16_224"
        _vlmo(f"vlmo_{size}_patch16_480_vqa", size, image_size=480, heads=("vqa",),
              task=f"task_finetune_vqa_{size}_image480", init_from=pre, result=f"VQAv2 test-dev {_VQA[size]}")
        _vlmo(f"vlmo_{size}_patch16_384_nlvr2", size, image_size=384, heads=("nlvr2",),
              task=f"task_finetune_nlvr2_{size}_image384", init_from=pre, result=f"NLVR2 test-P {_NLVR2[size]}")
        tr, ir = _COCO[size]
        _vlmo(f"vlmo_{size}_patch16_384_coco", size, image_size=384, heads=("irtr",),
              task=f"task_finetune_irtr_coco_{size}_image384", init_from=pre, result=f"COCO TR@1 {tr} IR@1 {ir}")
        tr, ir = _F30K[size]
        _vlmo(f"vlmo_{size}_patch16_384_f30k", size, image_size=384, heads=("irtr",),
              task=f"task_finetune_irtr_f30k_{size}_image384", init_from=_F30K_INIT[size],
              result=f"F30K TR@1 {tr} IR@1 {ir}")
    beit = "beit_base_patch16_224_pt22k_ft22kto1k"
    register(PretrainedWeight(name=beit, file=f"{beit}.pth", url=f"{OFFICIAL_BASE_URL}/beit/{beit}.pth",
                              arch="vlmo_base_patch16", image_size=224, heads=("textmlm",), max_text_len=196,
                              task="task_textmlm_base", beit=True,
                              result="BEiT-base (stage 1), initialises VLMo-base stage 2"))


_register_official()
