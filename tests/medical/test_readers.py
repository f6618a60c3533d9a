"""CheXpert and BraTS readers on small files written in the exact public layouts."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from mfassl_medical.data import (
    BRATS_MODALITIES,
    CHEXPERT_LABELS,
    MedicalDataError,
    chexpert_patient_id,
    find_brats_cases,
    read_chexpert,
    split_by_patient,
)
from mfassl_medical.transforms import ConvertBraTSLabels, ConvertBraTSLabelsd, SafeLoadImaged

HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]


def _row(path, view="Frontal", labels=None, sex="Female", age="68"):
    lab = {k: "" for k in CHEXPERT_LABELS}
    lab.update(labels or {})
    return [path, sex, age, view, "AP" if view == "Frontal" else "", *[lab[k] for k in CHEXPERT_LABELS]]


def write_chexpert(parent, rows, split="train", folder="CheXpert-v1.0-small", header=HEADER, images=True):
    """Write ``<parent>/<folder>/<split>.csv`` and a small JPEG per row at the path it names."""
    from PIL import Image

    root = parent / folder
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{split}.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    if images:
        rng = np.random.default_rng(0)
        for r in rows:
            rel = r[0].split("/", 1)[1]  # without the dataset folder name, which may differ from `folder`
            f = root / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (24, 20), dtype=np.uint8)).save(f)
    return root


@pytest.fixture()
def chexpert(tmp_path):
    rows = [
        _row("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
             labels={"Cardiomegaly": "1.0", "Edema": "-1.0", "No Finding": ""}),
        _row("CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg", view="Lateral",
             labels={"Cardiomegaly": "1.0"}),
        _row("CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg", labels={"No Finding": "1.0"},
             age=""),
        _row("CheXpert-v1.0-small/train/patient00003/study2/view1_frontal.jpg",
             labels={"Pleural Effusion": "-1", "Support Devices": "0"}),
    ]
    return write_chexpert(tmp_path, rows)


def test_chexpert_policies(chexpert):
    i_card, i_edema = CHEXPERT_LABELS.index("Cardiomegaly"), CHEXPERT_LABELS.index("Edema")
    recs = read_chexpert(chexpert, "train", uncertainty="zeros")
    assert len(recs) == 4
    r = recs[0]
    assert r["label"].dtype == np.float32 and r["label"].shape == (14,)
    assert r["label"][i_card] == 1 and r["label"][i_edema] == 0 and r["label_mask"].min() == 1
    assert r["patient"] == "patient00001" and r["study"] == "study1" and r["view"] == "frontal"
    assert r["sex"] == "Female" and r["age"] == 68.0 and r["ap_pa"] == "AP"
    assert r["image"].endswith("view1_frontal.jpg") and (chexpert / "train/patient00001/study1/view1_frontal.jpg").samefile(r["image"])
    assert np.isnan(recs[2]["age"])

    ones = read_chexpert(chexpert, uncertainty="ones")[0]
    assert ones["label"][i_edema] == 1

    ign = read_chexpert(chexpert, uncertainty="ignore")[0]
    assert ign["label_mask"][i_edema] == 0 and ign["label"][i_edema] == 0 and ign["label_mask"].sum() == 13
    ign_nan = read_chexpert(chexpert, uncertainty="ignore", masked_value=float("nan"))[0]
    assert np.isnan(ign_nan["label"][i_edema])
    blank_ign = read_chexpert(chexpert, uncertainty="ignore", blank="ignore")[0]
    assert blank_ign["label_mask"].sum() == 1  # only Cardiomegaly is stated with certainty
    with pytest.raises(ValueError, match="uncertainty"):
        read_chexpert(chexpert, uncertainty="maybe")


def test_chexpert_frontal_only_extra_columns_and_csv_root(tmp_path):
    rows = [
        _row("CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg") + ["left"],
        _row("CheXpert-v1.0-small/valid/patient64541/study1/view2_lateral.jpg", view="Lateral") + ["none"],
    ]
    root = write_chexpert(tmp_path, rows, split="valid", header=HEADER + ["Side"])
    recs = read_chexpert(root, "valid", frontal_only=True)
    assert [r["view"] for r in recs] == ["frontal"] and recs[0]["side"] == "left"
    assert len(read_chexpert(root / "valid.csv")) == 2  # the CSV itself as root


def test_chexpert_renamed_dataset_folder_resolves(tmp_path):
    rows = [_row("CheXpert-v1.0-small/train/patient00007/study1/view1_frontal.jpg")]
    root = write_chexpert(tmp_path, rows, folder="my_chexpert_copy")
    rec = read_chexpert(root)[0]
    assert rec["image"].startswith(str(root)) and rec["patient"] == "patient00007"


def test_chexpert_images_load_with_monai(chexpert):
    recs = read_chexpert(chexpert)
    d = SafeLoadImaged("image", spatial_dims=2)(recs[0])
    assert d["image"].shape == (1, 20, 24)  # MONAI PNG/JPEG order: (C, W, H)


def test_patient_split_has_no_leakage_and_is_stable():
    recs = [{"patient": f"patient{p:05d}", "i": i} for p in range(1, 41) for i in range(3)]
    parts = split_by_patient(recs, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=1)
    sets = {k: {r["patient"] for r in v} for k, v in parts.items()}
    assert sum(len(v) for v in parts.values()) == len(recs)
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert 24 <= len(sets["train"]) <= 32
    again = split_by_patient(recs, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=1)
    assert {k: len(v) for k, v in again.items()} == {k: len(v) for k, v in parts.items()}
    other = split_by_patient(recs, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=2)
    assert {r["patient"] for r in other["val"]} != sets["val"]
    assert chexpert_patient_id("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg") == "patient00001"


# ---------------------------------------------------------------------- BraTS
def _nii(path, arr):
    nib.save(nib.Nifti1Image(arr, np.diag([1.0, 1.0, 1.0, 1.0])), str(path))


def write_brats_2021(root, case="BraTS2021_00000", seg=True, mods=("t1", "t1ce", "t2", "flair")):
    d = root / case
    d.mkdir(parents=True)
    for j, m in enumerate(mods):
        _nii(d / f"{case}_{m}.nii.gz", np.full((6, 7, 5), j + 1, np.float32) + np.arange(5, dtype=np.float32))
    if seg:
        lab = np.zeros((6, 7, 5), np.uint8)
        lab[1, 1, 1], lab[2, 2, 2], lab[3, 3, 3] = 1, 2, 4
        _nii(d / f"{case}_seg.nii.gz", lab)
    return d


def write_brats_2023(root, case="BraTS-GLI-00000-000", seg=True):
    d = root / case
    d.mkdir(parents=True)
    for j, m in enumerate(("t1n", "t1c", "t2w", "t2f")):
        _nii(d / f"{case}-{m}.nii.gz", np.full((6, 7, 5), j + 1, np.float32) + np.arange(5, dtype=np.float32))
    if seg:
        lab = np.zeros((6, 7, 5), np.uint8)
        lab[1, 1, 1], lab[2, 2, 2], lab[3, 3, 3] = 1, 2, 3
        _nii(d / f"{case}-seg.nii.gz", lab)
    return d


def test_brats_both_namings_fixed_modality_order(tmp_path):
    write_brats_2021(tmp_path)
    write_brats_2021(tmp_path, "BraTS2021_00001", seg=False)
    write_brats_2023(tmp_path)
    cases = find_brats_cases(tmp_path)
    assert [c["case"] for c in cases] == ["BraTS-GLI-00000-000", "BraTS2021_00000", "BraTS2021_00001"]
    assert [c["naming"] for c in cases] == ["2023", "2021", "2021"]
    c21 = cases[1]
    assert [p.rsplit("_", 1)[1] for p in c21["image"]] == ["t1.nii.gz", "t1ce.nii.gz", "t2.nii.gz", "flair.nii.gz"]
    assert [p.rsplit("-", 1)[1] for p in cases[0]["image"]] == ["t1n.nii.gz", "t1c.nii.gz", "t2w.nii.gz", "t2f.nii.gz"]
    assert "label" in c21 and "label" not in cases[2]
    with pytest.raises(MedicalDataError, match="seg"):
        find_brats_cases(tmp_path, require_seg=True)

    t = Compose([LoadImaged(["image", "label"], image_only=True), EnsureChannelFirstd(["image", "label"]),
                 ConvertBraTSLabelsd("label")])
    for c in cases[:2]:
        out = t(c)
        assert out["image"].shape == (4, 6, 7, 5)
        assert [float(out["image"][k, 0, 0, 0]) for k in range(4)] == [1.0, 2.0, 3.0, 4.0]  # t1, t1ce, t2, flair
        lab = out["label"]
        assert lab.shape == (3, 6, 7, 5)
        tc, wt, et = lab[0], lab[1], lab[2]
        assert float(tc.sum()) == 2 and float(wt.sum()) == 3 and float(et.sum()) == 1 and float(et[3, 3, 3]) == 1


@pytest.mark.parametrize("version,et_label", [("2021", 4), ("2023", 3)])
def test_convert_brats_labels_versions(version, et_label):
    lab = torch.tensor([0, 1, 2, et_label]).reshape(1, 4, 1, 1)
    out = ConvertBraTSLabels(regions=("ET", "TC", "WT"), version=version)(lab)
    assert out[:, :, 0, 0].tolist() == [[0, 0, 0, 1], [0, 1, 0, 1], [0, 1, 1, 1]]
    other = 3 if et_label == 4 else 4  # the other release's ET label is refused, not dropped
    with pytest.raises(MedicalDataError, match=rf"outside the label set BraTS.*\[{other}\]|\[{other}\] outside"):
        ConvertBraTSLabels(version=version)(torch.tensor([[[[other]]]]))
    assert ConvertBraTSLabels()(np.array([[[[et_label]]]])).shape == (3, 1, 1, 1)


def test_brats_incomplete_case(tmp_path, caplog):
    write_brats_2021(tmp_path)
    write_brats_2021(tmp_path, "BraTS2021_00002", mods=("t1", "t2", "flair"))
    with pytest.raises(MedicalDataError, match=r"BraTS2021_00002.*t1ce"):
        find_brats_cases(tmp_path)
    cases = find_brats_cases(tmp_path, on_incomplete="skip")
    assert [c["case"] for c in cases] == ["BraTS2021_00000"]
    assert any("BraTS2021_00002" in r.getMessage() for r in caplog.records)
    assert BRATS_MODALITIES == ("t1", "t1ce", "t2", "flair")
