"""The arrow schemas of the ViLT files (spec 6.1), one per kind of dataset."""
from __future__ import annotations

import pyarrow as pa

_STR_LIST = pa.list_(pa.string())
_INT_LIST = pa.list_(pa.int64())

# COCO / F30K Karpathy, GCC, SBU: one row per image with its captions.
CAPTION = pa.schema([("image", pa.binary()), ("caption", _STR_LIST), ("image_id", pa.string()),
                     ("split", pa.string())])
# Visual Genome: one row per image with its region phrases and boxes.
VG = pa.schema([("image", pa.binary()), ("caption", _STR_LIST), ("width", _INT_LIST), ("height", _INT_LIST),
                ("x", _INT_LIST), ("y", _INT_LIST), ("image_id", pa.string())])
# VQAv2: one row per image with its questions; per question the in-vocabulary answers, labels and scores.
VQA = pa.schema([("image", pa.binary()), ("questions", _STR_LIST), ("answers", pa.list_(_STR_LIST)),
                 ("answer_labels", pa.list_(_INT_LIST)), ("answer_scores", pa.list_(pa.list_(pa.float64()))),
                 ("image_id", pa.int64()), ("question_id", _INT_LIST), ("split", pa.string())])
# NLVR2: one row per image pair with its statements and "True"/"False" answers.
NLVR2 = pa.schema([("image_0", pa.binary()), ("image_1", pa.binary()), ("questions", _STR_LIST),
                   ("answers", _STR_LIST), ("identifier", pa.string())])
# WikiBK: text only; `image` is the string "None" as officially.
TEXT = pa.schema([("image", pa.string()), ("caption", _STR_LIST), ("source", pa.string()), ("split", pa.string())])
