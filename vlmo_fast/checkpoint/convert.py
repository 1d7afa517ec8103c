"""Pure conversions of official VLMo state dicts (official key names, spec 4.1) for the official load path.

Every function takes tensors or a state dict and returns new ones: the input dict is never mutated, and
tensors that are not changed are shared with it, not copied.  `official_pretrained_load` chains them in the
order of the official `load_pretrained_weight` (spec 4.2 steps 2-5) so that loading its result with
`strict=False` gives the same parameters as the official fine-tuning load.
"""
from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.nn.functional as F
from scipy.interpolate import RectBivariateSpline
from torch import Tensor

from vlmo_fast.ops.relpos import rows_after_patch_grid, table_rows as relpos_table_rows, window_of_table

TABLE_KEY = "relative_position_bias_table"
POS_EMBED_KEY = "transformer.pos_embed"
TEXT_POS_EMB_KEY = "text_embeddings.position_embeddings.weight"
TEXT_POS_IDS_KEY = "text_embeddings.position_ids"
# Index matrices saved next to the table in released checkpoints; not module state (spec 4.2 step 5, 8.3).
INDEX_KEYS = ("relative_position_index", "text_relative_position_index", "text_imag_relative_position_index")

# Official bracket and tolerance of the bisection for the geometric-progression ratio.
_Q_LEFT, _Q_RIGHT, _Q_TOL = 1.01, 1.5, 1e-6


def window_from_table_rows(rows: int, l0: int = 196, what: str = TABLE_KEY) -> int:
    """The patch-grid side W of a table with `rows` = (2W-1)^2 + 2*l0 + 5 rows; a clear error otherwise."""
    window = window_of_table(rows, l0)
    if window is None:
        raise ValueError(f"{what} has {rows} rows, which is not (2W-1)^2 + 2*{l0} + 5 for any window W "
                         f"(wrong max_text_len_of_initckpt l0={l0}?)")
    return window


def _progression_ratio(src_half: int, dst_half: int) -> float:
    """Ratio q whose progression 1 + q + ... + q^(src_half-1) reaches dst_half, by the official bisection.

    The official loop uses the closed form a(1-q^n)/(1-q) and keeps the LAST midpoint, so for small grids q
    saturates just below the 1.5 bound; both details change the spline's knots, hence are kept.
    """
    left, right = _Q_LEFT, _Q_RIGHT
    q = left
    while right - left > _Q_TOL:
        q = (left + right) / 2.0
        if (1.0 - q ** src_half) / (1.0 - q) > dst_half:
            right = q
        else:
            left = q
    return q


def _source_coords(src_size: int, q: float) -> np.ndarray:
    """Offsets [-d_n..-d_1, 0, d_1..d_n] of the source grid, d_k = 1 + q + ... + q^(k-1) (official order)."""
    dis, cur = [], 1.0
    for i in range(src_size // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    return np.array([-d for d in reversed(dis)] + [0.0] + dis, dtype=np.float64)


def resize_relpos_table(table: Tensor, src_window: int, dst_window: int, l0: int = 196) -> Tensor:
    """Resize a merged relative-position table (R, C) from a src_window to a dst_window patch grid.

    The official rule (spec 4.2 step 5): the (2W-1)^2 patch rows of each column are a (2W-1, 2W-1) grid of
    (dh, dw) offsets placed on geometric-progression coordinates and resampled with a bicubic
    interpolating spline at integer offsets (FITPACK clamps points outside the source range); the trailing
    2*l0+5 rows (image CLS, text) are kept.  `RectBivariateSpline(kx=ky=3, s=0)` is what the removed
    `interp2d(kind="cubic")` computed, in float64 on the float32 values; the result is cast back.

    Example: resize_relpos_table(sd["relative_position_bias_table"], 14, 30)  # (1126, 144) -> (3878, 144)
    """
    if table.dim() != 2:
        raise ValueError(f"{TABLE_KEY} must be 2-D (rows, heads*layers), got shape {tuple(table.shape)}")
    expected = relpos_table_rows(src_window, l0)
    if table.shape[0] != expected:
        raise ValueError(f"{TABLE_KEY} has {table.shape[0]} rows, expected {expected} for window "
                         f"{src_window} and l0 {l0}")
    if src_window == dst_window:
        return table
    src_size, dst_size = 2 * src_window - 1, 2 * dst_window - 1
    extra = table[-rows_after_patch_grid(l0):]  # (2*l0+5, C)
    q = _progression_ratio(src_size // 2, dst_size // 2)
    x = _source_coords(src_size, q)
    t = np.arange(-(dst_size // 2), dst_size // 2 + 0.1, 1.0)
    # The official code goes through .float().numpy(); float32 -> float64 is exact, so this matches.
    grid = table[:-rows_after_patch_grid(l0)].detach().float().cpu().numpy().astype(np.float64)  # (src_size^2, C)
    cols = []
    for c in range(grid.shape[1]):
        z = grid[:, c].reshape(src_size, src_size)  # row = dh, col = dw
        cols.append(RectBivariateSpline(x, x, z, kx=3, ky=3, s=0)(t, t).reshape(-1))
    resized = torch.from_numpy(np.stack(cols, axis=1)).to(torch.float32)  # (dst_size^2, C)
    return torch.cat([resized.to(device=table.device, dtype=table.dtype), extra], dim=0)


def interpolate_pos_embed(pos_embed: Tensor, dst_grid: int) -> Tensor:
    """Resize absolute image positions (1, 1 + Ws*Ws, D) to (1, 1 + dst_grid^2, D) (base_plus, spec 4.2 step 4).

    The CLS slot is kept; the grid is resampled with bicubic F.interpolate(align_corners=False), as the
    official `interpolate_pos_embed`.

    Example: interpolate_pos_embed(sd["transformer.pos_embed"], 24)  # (1, 197, D) -> (1, 577, D)
    """
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"{POS_EMBED_KEY} must be (1, 1 + W*W, D), got shape {tuple(pos_embed.shape)}")
    n, dim = pos_embed.shape[1] - 1, pos_embed.shape[2]
    src_grid = math.isqrt(n)
    if src_grid * src_grid != n:
        raise ValueError(f"{POS_EMBED_KEY} has {n} patch positions, not a square grid")
    if src_grid == dst_grid:
        return pos_embed
    cls_tok, grid = pos_embed[:, :1], pos_embed[:, 1:]
    grid = grid.reshape(1, src_grid, src_grid, dim).permute(0, 3, 1, 2)  # (1, D, Ws, Ws)
    grid = F.interpolate(grid, size=(dst_grid, dst_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).flatten(1, 2)  # (1, Wd*Wd, D)
    return torch.cat([cls_tok, grid], dim=1)


def truncate_text_positions(sd: dict[str, Tensor], max_text_len: int) -> dict[str, Tensor]:
    """Keep the first max_text_len text positions (embeddings and ids) when the checkpoint has another count.

    Spec 4.2 step 3 (e.g. stage 2 -> 3: 196 -> 40).  Unlike the official code a missing
    `text_embeddings.position_ids` is not a KeyError: it is rebuilt as arange(max_text_len).  A checkpoint
    without text position embeddings (BEiT) is returned unchanged.

    Example: sd = truncate_text_positions(sd, 40)
    """
    if TEXT_POS_EMB_KEY not in sd:
        return dict(sd)
    emb = sd[TEXT_POS_EMB_KEY]
    if emb.shape[0] == max_text_len:
        return dict(sd)
    if emb.shape[0] < max_text_len:
        raise ValueError(f"{TEXT_POS_EMB_KEY} has {emb.shape[0]} positions, fewer than max_text_len "
                         f"{max_text_len}; text positions can only be truncated")
    out = dict(sd)
    out[TEXT_POS_EMB_KEY] = emb[:max_text_len]
    ids = sd.get(TEXT_POS_IDS_KEY)
    out[TEXT_POS_IDS_KEY] = (ids[:, :max_text_len] if ids is not None
                             else torch.arange(max_text_len, device=emb.device).unsqueeze(0))  # (1, Lt)
    return out


_BEIT_TABLE = re.compile(r"^blocks\.(\d+)\.attn\.relative_position_bias_table$")
# Backbone keys of the official module (spec 4.1); anything else a conversion produces is ignored on load.
_VLMO_BACKBONE_KEY = re.compile(
    r"^transformer\.(cls_token|pos_embed|patch_embed\.proj\.(weight|bias)|norm\.(weight|bias)|blocks\.\d+\."
    r"(gamma_[12]|norm1\.(weight|bias)|attn\.(q_bias|v_bias|qkv\.weight|proj\.(weight|bias))"
    r"|norm2_(text|imag|vl)\.(weight|bias)|mlp_(text|imag|vl)\.fc[12]\.(weight|bias)))$")


def convert_beit_to_textpt(beit_sd: dict[str, Tensor], num_layers: int, num_heads: int, table_rows: int,
                           dtype: torch.dtype = torch.float32) -> tuple[dict[str, Tensor], dict[str, list[str]]]:
    """BEiT (stage 1) state dict -> VLMo keys for text-only pre-training (stage 2), spec 4.4.

    Per-layer `blocks.{i}.attn.relative_position_bias_table` (N, H) are placed side by side (layer order)
    in the first N rows of a zero (table_rows, num_layers*num_heads) table (the fresh module table; `dtype`
    is its dtype); keys with "mlp" become the image FFN (`mlp_imag`), keys with "norm2" its LayerNorm
    (`norm2_imag`); every other key gets the `transformer.` prefix, including keys the VLMo module does not
    have (listed in the report, as the official load would report them unexpected).

    Report: "renamed" (old -> new), "merged_tables" (source keys, layer order), "not_in_vlmo" (converted
    keys the official module lacks).

    Example: sd, report = convert_beit_to_textpt(beit, num_layers=12, num_heads=12, table_rows=1126)
    """
    out: dict[str, Tensor] = {}
    tables: dict[int, Tensor] = {}
    report: dict[str, list[str]] = {"renamed": [], "merged_tables": [], "not_in_vlmo": []}
    for key, value in beit_sd.items():
        if "relative_position_bias_table" in key:
            m = _BEIT_TABLE.match(key)
            if m is None:
                raise ValueError(f"{key}: only per-layer tables blocks.{{i}}.attn.relative_position_bias_table "
                                 "are supported (a shared BEiT rel_pos_bias has no per-layer columns)")
            tables[int(m.group(1))] = value
            continue
        # Order matters as in the official code: "mlp" is tested before "norm2".
        if "mlp" in key:
            new_key = "transformer." + key.replace("mlp", "mlp_imag")
        elif "norm2" in key:
            new_key = "transformer." + key.replace("norm2", "norm2_imag")
        else:
            new_key = "transformer." + key
        out[new_key] = value
        report["renamed"].append(f"{key} -> {new_key}")
        if not _VLMO_BACKBONE_KEY.match(new_key):
            report["not_in_vlmo"].append(new_key)
    if tables:
        if sorted(tables) != list(range(num_layers)):
            raise ValueError(f"BEiT checkpoint has relative_position_bias_table for layers {sorted(tables)}, "
                             f"expected 0..{num_layers - 1}")
        for i, tab in tables.items():
            if tab.dim() != 2 or tab.shape[1] != num_heads or tab.shape[0] != tables[0].shape[0]:
                raise ValueError(f"blocks.{i}.attn.relative_position_bias_table has shape {tuple(tab.shape)}, "
                                 f"expected ({tables[0].shape[0]}, {num_heads})")
        report["merged_tables"] = [f"blocks.{i}.attn.relative_position_bias_table" for i in range(num_layers)]
        merged = torch.cat([tables[i] for i in range(num_layers)], dim=1)  # (N, L*H)
        if merged.shape[0] > table_rows:
            raise ValueError(f"BEiT relative_position_bias_table has {merged.shape[0]} rows, more than the "
                             f"VLMo table's {table_rows}")
        full = torch.zeros(table_rows, num_layers * num_heads, dtype=dtype, device=merged.device)
        full[: merged.shape[0]] = merged
        out[TABLE_KEY] = full
    return out, report


def official_pretrained_load(sd: dict[str, Tensor], *, max_text_len: int, window: int, l0: int = 196,
                             textmlm: bool = False, num_layers: int | None = None,
                             num_heads: int | None = None) -> tuple[dict[str, Tensor], list[str]]:
    """The official `load_path` conversion (spec 4.2 steps 2-5) for a model with this text length and grid.

    In order: BEiT -> text pre-training keys when `textmlm`; text positions truncated to max_text_len;
    `transformer.pos_embed` resized to the window x window grid when present (base_plus);
    `relative_position_bias_table` resized when its grid (read from its row count) differs from `window`.
    The three index matrices are dropped when present, but unlike the official `pop` they are not
    required.  `num_layers`/`num_heads` are needed for `textmlm`; when given they also check the table's
    columns.  Returns the converted dict (load it with strict=False, as the official code does) and notes
    of what was done.

    Example: sd, notes = official_pretrained_load(read_checkpoint(p), max_text_len=40, window=30)
    """
    notes: list[str] = []
    out = dict(sd)
    if textmlm:
        if num_layers is None or num_heads is None:
            raise ValueError("textmlm conversion needs num_layers and num_heads (the merged table's columns)")
        out = _beit_to_text_pretraining(out, window, l0, num_layers, num_heads, notes)
    dropped = [k for k in INDEX_KEYS if k in out]
    for k in dropped:
        del out[k]
    if dropped:
        notes.append(f"dropped index matrices {dropped} (rebuilt by the model)")
    if TEXT_POS_EMB_KEY in out and out[TEXT_POS_EMB_KEY].shape[0] != max_text_len:
        src_len = out[TEXT_POS_EMB_KEY].shape[0]
        had_ids = TEXT_POS_IDS_KEY in out
        out = truncate_text_positions(out, max_text_len)
        notes.append(f"truncated text positions {src_len} -> {max_text_len}"
                     + ("" if had_ids else f" ({TEXT_POS_IDS_KEY} absent: rebuilt as arange)"))
    if POS_EMBED_KEY in out:
        src = out[POS_EMBED_KEY]
        out[POS_EMBED_KEY] = interpolate_pos_embed(src, window)
        if out[POS_EMBED_KEY] is not src:
            notes.append(f"interpolated {POS_EMBED_KEY} {tuple(src.shape)} -> {tuple(out[POS_EMBED_KEY].shape)}")
    if TABLE_KEY in out:
        _resize_table_to_window(out, window, l0, num_layers, num_heads, notes)
    return out, notes


def _beit_to_text_pretraining(sd: dict[str, Tensor], window: int, l0: int, num_layers: int, num_heads: int,
                              notes: list[str]) -> dict[str, Tensor]:
    """The BEiT keys renamed for text pre-training, its per-layer tables merged into the model's one (noted)."""
    rows = relpos_table_rows(window, l0)
    out, report = convert_beit_to_textpt(sd, num_layers, num_heads, rows)
    notes.append(f"converted BEiT keys for text pre-training ({len(report['renamed'])} renamed, "
                 f"{len(report['merged_tables'])} layer tables merged into ({rows}, {num_layers * num_heads}))")
    if report["not_in_vlmo"]:
        notes.append(f"keys the VLMo module does not have (ignored on load): {report['not_in_vlmo']}")
    if report["merged_tables"]:
        beit_rows = _beit_table_rows(sd)
        if beit_rows != (2 * window - 1) ** 2 + 3:
            notes.append(f"BEiT tables have {beit_rows} rows but window {window} has "
                         f"{(2 * window - 1) ** 2 + 3} image rows: copied row for row as the official code "
                         "does, so the image bias no longer matches its offsets")
    return out


def _resize_table_to_window(out: dict[str, Tensor], window: int, l0: int, num_layers: int | None,
                            num_heads: int | None, notes: list[str]) -> None:
    """The relative-position table resized in `out` when its grid (read from its row count) is not `window`; its
    columns checked against num_layers * num_heads when they are given."""
    table = out[TABLE_KEY]
    if num_layers is not None and num_heads is not None and table.shape[-1] != num_layers * num_heads:
        raise ValueError(f"{TABLE_KEY} has {table.shape[-1]} columns, expected num_layers*num_heads = "
                         f"{num_layers * num_heads}")
    src_window = window_from_table_rows(table.shape[0], l0)
    if src_window != window:
        out[TABLE_KEY] = resize_relpos_table(table, src_window, window, l0)
        notes.append(f"resized {TABLE_KEY} {tuple(table.shape)} -> {tuple(out[TABLE_KEY].shape)} "
                     f"(grid {2 * src_window - 1}x{2 * src_window - 1} -> {2 * window - 1}x{2 * window - 1})")


def _beit_table_rows(beit_sd: dict[str, Tensor]) -> int | None:
    """Rows of the first per-layer BEiT relative-position table, None if there is none."""
    for key, value in beit_sd.items():
        if _BEIT_TABLE.match(key):
            return value.shape[0]
    return None
