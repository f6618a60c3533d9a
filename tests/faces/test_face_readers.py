import numpy as np
import pytest
import torch

from mfassl_faces.demo import build_demo_data
from mfassl_faces.errors import FaceDataError
from mfassl_faces.io import read_landmark_file, read_pts, write_image, write_pts
from mfassl_faces.readers import (CelebAHQDataset, LandmarkDataset, identity_split, read_300w_folder,
                                  read_celeba_attributes, read_celeba_partition, read_celebahq_mapping,
                                  read_wflw_annotations)
from mfassl_faces.schemas import WFLW98

from face_helpers import place, template

ATTRS = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
         "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
         "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
         "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
         "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young").split()


def test_pts_round_trip_is_one_based(tmp_path) -> None:
    pts = np.array([[0.0, 0.0], [10.25, 3.5]])
    write_pts(tmp_path / "a.pts", pts)
    text = (tmp_path / "a.pts").read_text()
    assert text.startswith("version: 1\nn_points: 2\n{\n1.000000 1.000000\n")
    np.testing.assert_allclose(read_pts(tmp_path / "a.pts"), pts)
    (tmp_path / "b.pts").write_text("version: 1\nn_points: 3\n{\n1 2\n3 4\n}\n")
    with pytest.raises(FaceDataError, match=r"b\.pts: header says 3 points but the file holds 2"):
        read_pts(tmp_path / "b.pts")
    (tmp_path / "c.txt").write_text("1 2\n3 x\n")
    with pytest.raises(FaceDataError, match=r"c\.txt: cannot read landmarks"):
        read_landmark_file(tmp_path / "c.txt")


def _write_celeba(tmp_path, n=12, hq=True):
    rng = np.random.default_rng(0)
    files = [f"{i}.jpg" if hq else f"{i + 1:06d}.jpg" for i in range(n)]
    vals = rng.choice([-1, 1], (n, 40))
    rows = "\n".join(f"{f} " + " ".join(f"{v:2d}" for v in row) for f, row in zip(files, vals))
    name = "CelebAMask-HQ-attribute-anno.txt" if hq else "list_attr_celeba.txt"
    (tmp_path / name).write_text(f"{n}\n{' '.join(ATTRS)}\n{rows}\n")
    img_dir = tmp_path / "img"
    for f in files:
        write_image(img_dir / f, rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    return tmp_path / name, img_dir, files, vals


def test_celeba_attributes_both_formats(tmp_path) -> None:
    for hq in (True, False):
        path, _, files, vals = _write_celeba(tmp_path, hq=hq)
        names, table = read_celeba_attributes(path)
        assert names == ATTRS and list(table) == files
        np.testing.assert_array_equal(table[files[3]], (vals[3] > 0).astype(np.uint8))
    bad = tmp_path / "bad.txt"
    bad.write_text(f"1\n{' '.join(ATTRS)}\n0.jpg 1 1\n")
    with pytest.raises(FaceDataError, match=r"bad\.txt: line 3: expected a file name and 40 values"):
        read_celeba_attributes(bad)


def test_celebahq_official_and_identity_splits(tmp_path) -> None:
    path, img_dir, files, _ = _write_celeba(tmp_path, n=12, hq=True)
    celeba = [f"{i * 7 + 1:06d}.jpg" for i in range(12)]
    (tmp_path / "map.txt").write_text("idx         orig_idx    orig_file\n"
                                      + "\n".join(f"{i} {i * 7} {c}" for i, c in enumerate(celeba)) + "\n")
    assert read_celebahq_mapping(tmp_path / "map.txt")["3.jpg"] == celeba[3]
    (tmp_path / "part.txt").write_text("\n".join(f"{c} {i % 3}" for i, c in enumerate(celeba)) + "\n")
    assert read_celeba_partition(tmp_path / "part.txt")[celeba[4]] == "val"
    ds = CelebAHQDataset(img_dir, path, "test", partition_file=tmp_path / "part.txt", mapping_file=tmp_path / "map.txt",
                         size=16)
    assert ds.split_source == "official" and ds.files == ["2.jpg", "5.jpg", "8.jpg", "11.jpg"]
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["attributes"].shape == (40,)
    # identity-aware: 4 identities, 3 images each; no identity crosses splits
    (tmp_path / "id.txt").write_text("\n".join(f"{c} {i // 3}" for i, c in enumerate(celeba)) + "\n")
    seen = {}
    for split in ("train", "val", "test"):
        d = CelebAHQDataset(img_dir, path, split, identity_file=tmp_path / "id.txt", mapping_file=tmp_path / "map.txt",
                            fractions=(0.5, 0.25, 0.25), seed=3)
        assert d.split_source == "identity"
        for f in d.files:
            seen[f] = split
    assert len(seen) == 12
    for ident in range(4):
        assert len({seen[f"{i}.jpg"] for i in range(ident * 3, ident * 3 + 3)}) == 1
    assert identity_split({"a": "1", "b": "1", "c": "2"}, seed=0) == identity_split({"a": "1", "b": "1", "c": "2"}, seed=0)
    with pytest.raises(ValueError, match="partition_file"):
        CelebAHQDataset(img_dir, path, "train")


def _wflw_line(pts, box, flags, image):
    return " ".join(f"{v:.3f}" for v in pts.ravel()) + " " + " ".join(str(int(b)) for b in box) + " " \
        + " ".join(str(f) for f in flags) + " " + image


def test_wflw_reader_and_dataset(tmp_path) -> None:
    root = tmp_path / "WFLW_images"
    pts = place(template("wflw98"), 8.0, 20.0, (40.0, 45.0))
    write_image(root / "0--Parade" / "a.jpg", np.full((90, 80, 3), 128, np.uint8))
    ann = tmp_path / "list_98pt_rect_attr_test.txt"
    ann.write_text(_wflw_line(pts, (15, 20, 65, 75), (1, 0, 0, 1, 0, 0), "0--Parade/a.jpg") + "\n"
                   + _wflw_line(pts + 1, (15, 20, 65, 75), (0, 0, 1, 0, 0, 1), "0--Parade/a.jpg") + "\n")
    recs = read_wflw_annotations(ann, root)
    assert len(recs) == 2 and recs[0].landmarks.shape == (98, 2)
    np.testing.assert_allclose(recs[0].landmarks, pts, atol=1e-3)
    assert recs[0].box == (15.0, 20.0, 65.0, 75.0)
    assert recs[0].attributes == {"pose": 1, "expression": 0, "illumination": 0, "make-up": 1, "occlusion": 0, "blur": 0}
    ds = LandmarkDataset(recs, WFLW98, size=32)
    item = ds[1]
    assert item["image"].shape == (3, 32, 32) and item["landmarks"].shape == (98, 2)
    assert item["attributes"].tolist() == [0, 0, 1, 0, 0, 1]
    # the crop axis is the template's tilt: 8 degrees
    n = item["axis"][:2].numpy()
    assert abs(np.degrees(np.arctan2(n[0], n[1])) - 8.0) < 1e-3
    broken = tmp_path / "broken.txt"
    broken.write_text(_wflw_line(pts[:97], (0, 0, 1, 1), (0,) * 6, "x.jpg") + "\n")
    with pytest.raises(FaceDataError, match=r"broken\.txt: line 1: a WFLW line has 207 fields"):
        read_wflw_annotations(broken)


def test_demo_data_through_the_300w_reader(tmp_path) -> None:
    out = build_demo_data(tmp_path / "demo", n_per_face=1, seed=5, include_astronaut=False, max_side=200)
    assert "synthetic" in (out / "README.md").read_text().lower()
    recs = read_300w_folder(out)
    assert [r.image.name for r in recs] == ["breakingbad_000.png", "einstein_000.png", "takeo_000.png"]
    first = (out / "takeo_000.pts").read_text()
    again = build_demo_data(tmp_path / "demo", n_per_face=1, seed=5, include_astronaut=False, max_side=200)
    assert again == out and (out / "takeo_000.pts").read_text() == first
    other = build_demo_data(tmp_path / "demo2", n_per_face=1, seed=5, include_astronaut=False, max_side=200)
    assert (other / "takeo_000.pts").read_text() == first  # deterministic by seed
    torch.manual_seed(0)
    ds = LandmarkDataset(recs, "ibug68", size=48, flip_prob=1.0)
    item = ds[2]
    assert item["image"].shape == (3, 48, 48) and not item["axis_fallback"]
    (out / "takeo_000.pts").write_text("version: 1\nn_points: 2\n{\n1 1\n2 2\n}\n")
    with pytest.raises(FaceDataError, match=r"takeo_000\.pts: expected 68 landmarks"):
        read_300w_folder(out)


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.__setitem__(11, "nan"), r"line 2: non-finite value 'nan' \(landmark 5 y; 1 non-finite in all\)"),
    (lambda f: f.__setitem__(40, "inf"), r"line 2: non-finite value 'inf' \(landmark 20 x"),
    (lambda f: f.__setitem__(198, "nan"), r"line 2: non-finite value 'nan' \(box value 3 of 4"),
    (lambda f: f.__setitem__(198, "10"), r"line 2: the box .* = 15 20 10 75 has x_max < x_min"),
    (lambda f: f.__setitem__(199, "5"), r"line 2: the box .* has y_max < y_min"),
    (lambda f: f.__setitem__(201, "0.5"), r"line 2: the six attribute flags .* must each be 0 or 1, got 0 0.5 0 0 0 0"),
    (lambda f: f.__setitem__(205, "7"), r"line 2: the six attribute flags .* got 0 0 0 0 0 7"),
])
def test_wflw_reader_refuses_wrong_values(tmp_path, edit, message) -> None:
    pts = place(template("wflw98"), 0.0, 20.0, (40.0, 45.0))
    good = _wflw_line(pts, (15, 20, 65, 75), (0,) * 6, "a.jpg")
    fields = good.split()
    edit(fields)
    ann = tmp_path / "list_98pt_rect_attr_train.txt"
    ann.write_text(good + "\n" + " ".join(fields) + "\n")
    with pytest.raises(FaceDataError, match=r"list_98pt_rect_attr_train\.txt: " + message):
        read_wflw_annotations(ann)


def test_pts_refuses_non_finite_naming_the_line(tmp_path) -> None:
    (tmp_path / "a.pts").write_text("version: 1\nn_points: 3\n{\n1 2\n\n3 inf\n5 6\n}\n")
    with pytest.raises(FaceDataError, match=r"a\.pts: line 6: non-finite coordinate '3 inf'"):
        read_pts(tmp_path / "a.pts")
    (tmp_path / "b.pts").write_text("version: 1\nn_points: 2\n{\n1 2\n3\n}\n")
    with pytest.raises(FaceDataError, match=r"b\.pts: line 5: a \.pts point needs two coordinates"):
        read_pts(tmp_path / "b.pts")
    (tmp_path / "c.json").write_text("[[1, 2], [null, null], [3, 4]]")
    assert np.isnan(read_landmark_file(tmp_path / "c.json")[1]).all()  # a detector's missing point is kept
    (tmp_path / "d.txt").write_text("1 2\ninf 4\n")
    with pytest.raises(FaceDataError, match=r"d\.txt: infinite coordinate at point\(s\) \[1\]"):
        read_landmark_file(tmp_path / "d.txt")
