"""How the attention kernels tile the packed layout (kernels/attention_tiles.py `tile_work`, `vlmo-fast bench
tiles`): exact counts on a hand-sized layout, at least 75% real tile work at VLMo-base shapes for every config the
bf16 autotuners keep, and the CPU dispatch of attention importing no triton."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from vlmo_fast.bench_tiles import caption_layout, kept_configs, useful_fractions
from vlmo_fast.cli import main
from vlmo_fast.kernels.attention_tiles import tile_work


def test_tile_work_counts_a_hand_layout():
    """Two pairs: text 3 and 20 rows (keys 3 and 20), 5 image rows each; tiles 16 x 16 for queries and keys.
    Forward: pair 0 has 8 query and 8 key rows (one 16 x 16 tile, 64 real), pair 1 25 and 25 (2 x 2 tiles, 625
    real).  dk/dv: slots [text 20; image 5] = 25 in slot tiles of 16: pair 0 has keys in tile 0 (text 0..2) and
    tile 1 (image slots 20..24), pair 1 in both; query tiles 1 and 2."""
    tq = torch.tensor([3, 20])
    il = torch.tensor([5, 5])
    work = tile_work(tq, tq, il, 20, (16, 16), (16, 16))
    real = 64 + 625
    assert work["forward"] == pytest.approx(real / (256 + 4 * 256))
    assert work["dkdv"] == pytest.approx(real / (2 * 16 * 16 + 2 * 16 * 32))
    assert work["backward"] == pytest.approx(2 * real / (256 + 4 * 256 + 2 * 16 * 16 + 2 * 16 * 32))


@pytest.mark.parametrize("image", [224, 384, 480])
@pytest.mark.parametrize("head_dim,bias", [(64, True), (64, False), (34, False)], ids=["base", "base-nobias",
                                                                                     "base_plus"])
def test_three_quarters_of_the_tile_work_is_real(image, head_dim, bias):
    layout = caption_layout(32, image)
    query_blocks, key_blocks = kept_configs(head_dim, bias)
    assert query_blocks and key_blocks
    assert min(b[0] for b in query_blocks) >= 64 and min(b[1] for b in key_blocks) >= 64, "wgmma needs 64 rows"
    for record in useful_fractions(layout, query_blocks, key_blocks):
        assert min(record["forward"], record["backward"]) >= 0.75, record


def test_bench_tiles_prints_one_json_line(capsys):
    assert main(["bench", "tiles", "--image", "384", "--batch", "4"]) == 0
    record = json.loads(capsys.readouterr().out.strip())
    assert record["image_rows"] == 577 and record["batch"] == 4
    assert 0.75 <= record["useful_fraction"] <= 1.0
    assert record["useful_fraction"] == min(min(c["forward"], c["backward"]) for c in record["configs"])


def test_cpu_attention_dispatch_imports_no_triton():
    code = ("import sys; import vlmo_fast.ops.self_attention, vlmo_fast.ops.attention_bias; "
            "print('triton' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
