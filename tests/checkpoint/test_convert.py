"""State-dict conversions against the official code (interp_units, small_480_from64) and for other configs.

Contract: the relative-position resize, the pos_embed interpolation and the BEiT -> text conversion reproduce
the official tensors bit for bit (torch.equal); the full official load of `src64` at 96 px reproduces the
loaded `params` (the table within 1e-5, everything else exactly).
"""
from __future__ import annotations

import ast
import re

import pytest
import torch

from tests.helpers import FixtureSet
from vlmo_fast.checkpoint import convert
from vlmo_fast.checkpoint.convert import (convert_beit_to_textpt, interpolate_pos_embed, official_pretrained_load,
                                          resize_relpos_table, truncate_text_positions, window_from_table_rows)
from vlmo_fast.ops.relpos import table_rows

INDEX_KEYS = ("relative_position_index", "text_relative_position_index", "text_imag_relative_position_index")


@pytest.fixture(scope="module")
def units(official_dir) -> FixtureSet:
    return FixtureSet.load(official_dir, "interp_units")


@pytest.fixture(scope="module")
def from64(official_dir) -> FixtureSet:
    return FixtureSet.load(official_dir, "small_480_from64")


def test_relpos_cases_exact(units):
    cases = units.meta["relpos"]
    assert {c["key"] for c in cases} >= {"relpos_224_to_384", "relpos_224_to_480", "relpos_64_to_96",
                                         "relpos_224_to_224"}
    for c in cases:
        src, want = units.tensors[c["key"] + ".in"], units.tensors[c["key"] + ".out"]
        got = resize_relpos_table(src, c["src_window"], c["dst_window"], c["max_text_len_of_initckpt"])
        assert got.shape == want.shape == tuple(c["out_shape"]), c["key"]
        assert torch.equal(got, want), f"{c['key']}: max err {(got - want).abs().max().item():.3g}"


def test_pos_embed_cases_exact(units):
    cases = units.meta["pos_embed"]
    assert len(cases) == 4
    for c in cases:
        src, want = units.tensors[c["key"] + ".in"], units.tensors[c["key"] + ".out"]
        dst_grid = int(c["key"].rsplit("_", 1)[1]) // 16
        got = interpolate_pos_embed(src, dst_grid)
        assert got.shape == want.shape == tuple(c["out_shape"]), c["key"]
        assert torch.equal(got, want), f"{c['key']}: max err {(got - want).abs().max().item():.3g}"


def test_beit_to_textpt_exact(units):
    want = units.group("textpt_conv")
    got, report = convert_beit_to_textpt(units.group("beit_in"), num_layers=4, num_heads=4, table_rows=446)
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    assert len(report["merged_tables"]) == 4
    # Exactly the keys the official load reported as unexpected.
    unexpected = ast.literal_eval(units.meta["textpt"]["unexpected_keys_line"][0].split(": ", 1)[1])
    assert sorted(report["not_in_vlmo"]) == sorted(unexpected)


def test_textpt_official_load_matches_loaded_model(units):
    """Every key the official model took from the converted BEiT checkpoint equals our conversion."""
    model = units.group("textpt_model")
    got, notes = official_pretrained_load(units.group("beit_in"), max_text_len=196, window=4, textmlm=True,
                                          num_layers=4, num_heads=4)
    shared = [k for k in got if k in model]
    assert len(shared) == len(got) - 8  # fc_norm.*, head.*, 4 per-block index matrices are not module keys
    for k in shared:
        assert torch.equal(got[k], model[k]), k
    assert any("converted BEiT" in n for n in notes)


def test_small_480_from64_step_a(from64):
    params = from64.params
    got, notes = official_pretrained_load(from64.group("src64"), max_text_len=16, window=6, num_layers=6,
                                          num_heads=8)
    heads = ("vqa_classifier.", "nlvr2_classifier.")
    expected_keys = {k for k in params if not k.startswith(heads)}
    assert set(got) == expected_keys
    for k in expected_keys - {"token_type_embeddings.weight", "relative_position_bias_table"}:
        assert torch.equal(got[k], params[k]), k
    table, want = got["relative_position_bias_table"], params["relative_position_bias_table"]
    assert table.shape == want.shape == (518, 48)
    assert (table - want).abs().max().item() <= 1e-5
    # The model appends the NLVR2 token type (row 2 = row 1) later; the first two rows come from the checkpoint.
    assert torch.equal(got["token_type_embeddings.weight"], params["token_type_embeddings.weight"][:2])
    assert notes == ["resized relative_position_bias_table (446, 48) -> (518, 48) (grid 7x7 -> 11x11)"]


def test_source_coordinates_match_official_log(from64):
    """The geometric-progression coordinates the official loader printed for the 7x7 -> 11x11 resize."""
    line = next(s for s in from64.meta["load_log"] if s.startswith("Original positions"))
    want = [float(v) for v in re.findall(r"-?[\d.]+", line)]
    q = convert._progression_ratio(7 // 2, 11 // 2)
    assert convert._source_coords(7, q).tolist() == want


def _random_table(window: int, cols: int, l0: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(table_rows(window, l0), cols, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("src,dst,l0", [(14, 24, 196), (5, 3, 40), (3, 7, 17)])
def test_resize_other_configs(src, dst, l0):
    """Any window pair and text length: shape, trailing rows kept, constants and planes reproduced."""
    table = _random_table(src, 3, l0)
    side = 2 * src - 1
    coords = convert._source_coords(side, convert._progression_ratio(side // 2, (2 * dst - 1) // 2))
    xx = torch.tensor(coords, dtype=torch.float64)
    plane = (0.25 + 0.5 * xx[:, None] - 0.75 * xx[None, :]).reshape(-1)  # linear in (dh, dw) coordinates
    table[: side * side, 1] = 2.5
    table[: side * side, 2] = plane.float()
    out = resize_relpos_table(table, src, dst, l0)
    dside = 2 * dst - 1
    assert out.shape == (table_rows(dst, l0), 3) and out.dtype == table.dtype
    assert torch.equal(out[dside * dside:], table[side * side:])
    assert torch.allclose(out[: dside * dside, 1], torch.full((dside * dside,), 2.5), atol=1e-6)
    t = torch.arange(-(dside // 2), dside // 2 + 1, dtype=torch.float64)
    inside = (t.abs() <= coords.max())  # FITPACK clamps outside the source range, so compare inside only
    want = (0.25 + 0.5 * t[:, None] - 0.75 * t[None, :])[inside][:, inside]
    got = out[: dside * dside, 2].double().reshape(dside, dside)[inside][:, inside]
    assert (got - want).abs().max().item() < 1e-4


def test_resize_keeps_low_precision_dtype():
    table = _random_table(4, 2, 196).to(torch.bfloat16)
    ref = resize_relpos_table(table.float(), 4, 6)
    out = resize_relpos_table(table, 4, 6)
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref.to(torch.bfloat16))


def test_resize_identity_and_bad_rows():
    table = _random_table(14, 2, 196)
    assert resize_relpos_table(table, 14, 14) is table
    with pytest.raises(ValueError, match="relative_position_bias_table has 1126 rows"):
        resize_relpos_table(table, 13, 24)
    with pytest.raises(ValueError, match="relative_position_bias_table has 1000 rows"):
        window_from_table_rows(1000)
    assert window_from_table_rows(3878) == 30 and window_from_table_rows(table_rows(5, 40), l0=40) == 5


def test_truncate_text_positions():
    emb = torch.randn(196, 8)
    sd = {"text_embeddings.position_embeddings.weight": emb,
          "text_embeddings.position_ids": torch.arange(196).unsqueeze(0), "other": torch.ones(2)}
    out = truncate_text_positions(sd, 40)
    assert torch.equal(out["text_embeddings.position_embeddings.weight"], emb[:40])
    assert torch.equal(out["text_embeddings.position_ids"], torch.arange(40).unsqueeze(0))
    assert sd["text_embeddings.position_embeddings.weight"].shape[0] == 196  # input untouched
    assert out["other"] is sd["other"]
    # Without position_ids (the official code raises KeyError): rebuilt.
    no_ids = truncate_text_positions({"text_embeddings.position_embeddings.weight": emb}, 40)
    assert torch.equal(no_ids["text_embeddings.position_ids"], torch.arange(40).unsqueeze(0))
    assert truncate_text_positions(sd, 196).keys() == sd.keys()
    assert truncate_text_positions({"other": torch.ones(1)}, 40).keys() == {"other"}
    with pytest.raises(ValueError, match="position_embeddings.weight has 196 positions"):
        truncate_text_positions(sd, 200)


def test_official_load_base_plus_and_index_keys():
    """base_plus: no table, abs image positions interpolated, text positions truncated, index keys optional."""
    pos = torch.randn(1, 197, 8)
    sd = {"transformer.pos_embed": pos, "text_embeddings.position_embeddings.weight": torch.randn(196, 8),
          "relative_position_index": torch.zeros(197, 197, dtype=torch.long)}
    out, notes = official_pretrained_load(sd, max_text_len=40, window=24)
    assert torch.equal(out["transformer.pos_embed"], interpolate_pos_embed(pos, 24))
    assert out["text_embeddings.position_embeddings.weight"].shape == (40, 8)
    assert not any(k in out for k in INDEX_KEYS) and "relative_position_index" in sd
    assert len(notes) == 3
    # Same grid and length, no index keys: nothing to do.
    same, notes = official_pretrained_load(out, max_text_len=40, window=24)
    assert notes == [] and all(same[k] is out[k] for k in out)


def test_official_load_errors(units):
    table = _random_table(14, 6, 196)
    with pytest.raises(ValueError, match="relative_position_bias_table has 6 columns"):
        official_pretrained_load({"relative_position_bias_table": table}, max_text_len=40, window=24,
                                 num_layers=2, num_heads=4)
    with pytest.raises(ValueError, match="num_layers and num_heads"):
        official_pretrained_load(units.group("beit_in"), max_text_len=40, window=4, textmlm=True)
    beit = units.group("beit_in")
    with pytest.raises(ValueError, match=r"layers \[0, 1, 2, 3\], expected 0..5"):
        convert_beit_to_textpt(beit, num_layers=6, num_heads=4, table_rows=446)
    with pytest.raises(ValueError, match="rel_pos_bias.relative_position_bias_table"):
        convert_beit_to_textpt({"rel_pos_bias.relative_position_bias_table": torch.zeros(52, 4)}, 4, 4, 446)


def test_textpt_window_mismatch_noted(units):
    """BEiT tables of a 4x4 grid loaded into a 6x6 model: copied as the official code does, with a note."""
    out, notes = official_pretrained_load(units.group("beit_in"), max_text_len=40, window=6, textmlm=True,
                                          num_layers=4, num_heads=4)
    assert out["relative_position_bias_table"].shape == (table_rows(6, 196), 16)
    assert any("image rows" in n for n in notes)
