"""Dataset annotation files first, the landmarks file next, a detector only for the rest; cached."""

import numpy as np
import pytest

from mfassl_faces import readers
from mfassl_faces.errors import FaceDataError
from mfassl_faces.io import write_image, write_pts
from mfassl_faces.readers import (LandmarkDataset, LandmarkRecord, collect_landmark_records, face_box,
                                  read_celeba_landmarks)

from face_helpers import place, template

CELEBA_HEADER = ("lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y "
                 "rightmouth_x rightmouth_y")


def _celeba(folder, rows):
    path = folder / "list_landmarks_align_celeba.txt"
    body = "\n".join(f"{name} " + " ".join(f"{v:4d}" for v in vals) for name, vals in rows)
    path.write_text(f"{len(rows)}\n{CELEBA_HEADER}\n{body}\n")
    return path


def test_read_celeba_landmarks_exact_layout(tmp_path) -> None:
    path = _celeba(tmp_path, [("000001.jpg", (69, 109, 106, 113, 77, 142, 73, 152, 108, 154)),
                              ("000002.jpg", (69, 110, 107, 112, 81, 135, 70, 151, 108, 153))])
    table = read_celeba_landmarks(path)
    assert list(table) == ["000001.jpg", "000002.jpg"]
    np.testing.assert_array_equal(table["000001.jpg"], [[69, 109], [106, 113], [77, 142], [73, 152], [108, 154]])
    bad = tmp_path / "bad.txt"
    bad.write_text(f"1\n{CELEBA_HEADER}\n000001.jpg 1 2 3\n")
    with pytest.raises(FaceDataError, match=r"bad\.txt: line 3: expected a file name and 10 coordinates, got 4"):
        read_celeba_landmarks(bad)
    bad.write_text("1\nx_left y_left\n000001.jpg 1 2\n")
    with pytest.raises(FaceDataError, match=r"bad\.txt: line 2: expected the columns lefteye_x"):
        read_celeba_landmarks(bad)
    bad.write_text(f"1\n{CELEBA_HEADER}\n000001.jpg 1 2 3 4 5 6 7 8 9 x\n")
    with pytest.raises(FaceDataError, match=r"line 3: non-numeric"):
        read_celeba_landmarks(bad)


def test_five_point_box_holds_the_face() -> None:
    pts = np.array([[69, 109], [106, 113], [77, 142], [73, 152], [108, 154]], dtype=float)
    x0, y0, x1, y1 = face_box(pts, "five")
    assert x1 - x0 == pytest.approx(y1 - y0) and x1 - x0 > 2.0 * 37
    assert x0 < pts[:, 0].min() - 15 and x1 > pts[:, 0].max() + 15 and y0 < pts[:, 1].min() - 20
    assert face_box(place(template("ibug68"), 0, 10, (5, 5)), "ibug68")[0] == pytest.approx(-5.0)


def _folder(tmp_path):
    root = tmp_path / "img_align_celeba"
    for name in ("000001.jpg", "000002.jpg", "pts_face.png", "cached.png", "new.png"):
        write_image(root / name, np.full((218, 178, 3), 90, np.uint8))
    write_pts(root / "pts_face.pts", place(template("ibug68"), 5.0, 30.0, (89.0, 120.0)))
    table = _celeba(tmp_path, [("000001.jpg", (69, 109, 106, 113, 77, 142, 73, 152, 108, 154)),
                               ("000002.jpg", (69, 110, 107, 112, 81, 135, 70, 151, 108, 153))])
    cache = tmp_path / "landmarks.jsonl"
    cached = place(template("wflw98"), -8.0, 30.0, (89.0, 110.0))
    cache.write_text('{"path": "cached.png", "status": "ok", "schema": "wflw98", "landmarks": %s}\n'
                     % np.round(cached, 3).tolist())
    return root, table, cache


def test_annotations_then_file_then_detector_once(tmp_path, monkeypatch) -> None:
    root, table_path, cache = _folder(tmp_path)
    calls = []

    def fake_compute(root_, out, source, kwargs, workers=1, progress=False, files=None, **guard):
        calls.append([f.as_posix() for f in files])
        with open(out, "a") as fh:
            pts = place(template("ibug68"), 12.0, 30.0, (89.0, 120.0))
            for f in files:
                fh.write('{"path": "%s", "status": "ok", "schema": "ibug68", "landmarks": %s, "box": null}\n'
                         % (f.as_posix(), np.round(pts, 3).tolist()))
        return {"failed": []}

    monkeypatch.setattr("mfassl_faces.readers.compute_landmarks", fake_compute)
    table = read_celeba_landmarks(table_path)
    records, counts = collect_landmark_records(root, table, "five", cache, source="dlib")
    assert calls == [["new.png"]]  # the detector only for the image without any landmarks
    assert counts == {"annotation": 2, "pts": 1, "landmarks_file": 1, "detector": 1, "no_face": 0, "errors": 0,
                      "missing": 0}
    by_name = {r.image.name: r for r in records}
    assert by_name["000001.jpg"].schema == "five" and by_name["000001.jpg"].origin == "annotation"
    assert by_name["pts_face.png"].schema == "ibug68" and by_name["cached.png"].schema == "wflw98"
    assert by_name["new.png"].origin == "landmarks_file"
    # cached: a second call runs no detector at all
    records2, counts2 = collect_landmark_records(root, table, "five", cache, source="dlib")
    assert calls == [["new.png"]] and counts2["landmarks_file"] == 2 and counts2["detector"] == 0
    # mixed layouts in one dataset: each crop's axis from its own landmarks
    ds = LandmarkDataset(records, "ibug68", size=32)
    angles = {}
    for i, r in enumerate(ds.records):
        item = ds[i]
        n = item["axis"][:2].numpy()  # index order (row, col)
        angles[r.image.name] = np.degrees(np.arctan2(n[0], n[1]))
        assert not item["axis_fallback"]
    assert angles["pts_face.png"] == pytest.approx(5.0, abs=1e-3)
    assert angles["cached.png"] == pytest.approx(-8.0, abs=1e-3)
    assert angles["new.png"] == pytest.approx(12.0, abs=1e-3)
    tilt = np.degrees(np.arctan2(113 - 109, 106 - 69))  # CelebA's eye line
    assert abs(angles["000001.jpg"] - tilt) < 6.0


def test_without_detector_images_are_counted_missing(tmp_path) -> None:
    root, table_path, cache = _folder(tmp_path)
    records, counts = collect_landmark_records(root, read_celeba_landmarks(table_path), "five", cache, source=None)
    assert len(records) == 4 and counts["missing"] == 1
    with pytest.raises(ValueError, match="landmarks_file"):
        collect_landmark_records(root, None, None, None, source="dlib")


def test_pretrain_arguments_take_the_folder(tmp_path) -> None:
    """What a user types for ``pretrain``: CelebA's landmark list, a landmarks file, no detector."""
    from mfassl_faces.cli_tasks import build_parser, landmark_sets

    root, table_path, cache = _folder(tmp_path)
    args = build_parser().parse_args(["pretrain", "--images", str(root), "--celeba-landmarks", str(table_path),
                                      "--landmarks-file", str(cache), "--landmark-source", "none", "--size", "32",
                                      "--test-fraction", "0.25", "--out", str(tmp_path / "run")])
    train, test, schema = landmark_sets(args)
    assert len(train) + len(test) == 4 and schema is None  # annotations in three layouts
    assert train[0]["image"].shape == (3, 32, 32)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pretrain", "--images", str(root), "--test-fraction", "nan"])


def test_record_with_wrong_landmark_count_names_the_image(tmp_path) -> None:
    write_image(tmp_path / "x.png", np.zeros((20, 20, 3), np.uint8))
    ds = LandmarkDataset([LandmarkRecord(tmp_path / "x.png", np.zeros((7, 2)), schema="five")], "ibug68", size=16)
    with pytest.raises(FaceDataError, match=r"x\.png: expected 5 landmarks"):
        ds[0]
    assert readers.LandmarkRecord(tmp_path / "x.png", np.zeros((5, 2))).origin == "annotation"


@pytest.mark.parametrize("command", ["pretrain", "benchmark"])
def test_no_progress_also_hides_the_landmark_bar(command, tmp_path, monkeypatch) -> None:
    from mfassl_faces.cli_tasks import build_parser, image_folder_records

    seen: list[bool] = []

    def collect(*args, **kwargs):
        seen.append(kwargs["progress"])
        return [], {}

    monkeypatch.setattr(readers, "collect_landmark_records", collect)
    for extra, expected in (([], True), (["--no-progress"], False)):
        args = build_parser().parse_args([command, "--images", str(tmp_path), "--out", str(tmp_path / "o"), *extra])
        image_folder_records(args)
        assert seen[-1] is expected
