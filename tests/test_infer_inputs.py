"""vitpose predict's boxes files: every malformed file or entry is a ValueError that names the
file and the entry and shows the offending value as JSON (never an internal tuple)."""
import json

import numpy as np
import pytest

from vitpose.infer.inputs import BoxIndex


def _write(tmp_path, content, raw=False):
    path = tmp_path / "dets.json"
    path.write_text(content if raw else json.dumps(content))
    return path


@pytest.mark.parametrize("content,match", [
    ('{"a.jpg": [[1, 2, 3, 4]', r"not valid JSON"),
    ({"a.jpg": [[1, 2, 3]]}, r"'a\.jpg' box 0: a box must be \[x, y, w, h\] or \[x, y, w, h, score\] \(numbers\), "
                            r"got \[1, 2, 3\]"),
    ({"a.jpg": [[1, 2, "w", 4]]}, r"'a\.jpg' box 0: .* got \[1, 2, \"w\", 4\]"),
    ({"a.jpg": [1, 2, 3, 4]}, r"'a\.jpg' box 0: .* got 1"),
    ({"a.jpg": {"bbox": [1, 2, 3, 4]}}, r"'a\.jpg': expected a list of boxes"),
    ([{"image_id": 1, "bbox": [1, 2, 3], "score": 0.9}], r"entry 0 \(image_id 1\): a box must be \[x, y, w, h\]"),
    ([{"image_id": 1, "bbox": [1, 2, 3, 4], "score": "high"}], r"entry 0 \(image_id 1\): score must be a number"),
    ([{"image_id": 1}], r"entry 0: a detection needs image_id and bbox, got \{\"image_id\": 1\}"),
    ({"images": [], "annotations": [{"image_id": 3, "bbox": [0, 0, 5]}]}, r"annotation 0 \(image_id 3\)"),
    (42, r"unsupported boxes JSON, a int"),
], ids=["bad-json", "3-numbers", "string", "flat-list", "dict-not-list", "coco-3-numbers", "coco-score",
        "coco-no-bbox", "dataset-3-numbers", "number"])
def test_malformed_boxes_name_the_file_and_entry(tmp_path, content, match):
    path = _write(tmp_path, content, raw=isinstance(content, str))
    with pytest.raises(ValueError, match=match) as e:
        BoxIndex(path)
    assert str(e.value).startswith(str(path)), e.value
    assert "(1, 2, 3)" not in str(e.value)


def test_good_boxes_come_back_with_a_score_column(tmp_path):
    path = _write(tmp_path, {"a.jpg": [[1, 2, 3, 4], [5, 6, 7, 8, 0.5]], "clip.mp4:3": [[0, 0, 2, 2]]})
    idx = BoxIndex(path)
    np.testing.assert_array_equal(idx.lookup("dir/a.jpg"), [[1, 2, 3, 4, 1.0], [5, 6, 7, 8, 0.5]])
    assert idx.lookup("clip.mp4", frame=3).shape == (1, 5) and idx.lookup("other.jpg").shape == (0, 5)
    coco = _write(tmp_path, [{"image_id": 397133, "bbox": [1, 2, 3, 4, 99], "score": 0.7, "category_id": 1},
                             {"image_id": 397133, "bbox": [1, 2, 3, 4], "score": 0.1, "category_id": 1}])
    np.testing.assert_array_equal(BoxIndex(coco, det_thr=0.5).lookup("000000397133.jpg"), [[1, 2, 3, 4, 0.7]])
