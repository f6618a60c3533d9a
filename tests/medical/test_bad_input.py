"""Bad input: a clear MedicalDataError naming the file; in a run the sample is skipped, counted and logged."""

from __future__ import annotations

import csv
import gzip
import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose
from torch.utils.data import Dataset as TorchDataset

from mfassl_medical.data import CHEXPERT_LABELS, MedicalDataError, SkipBadSamples, read_chexpert
from mfassl_medical.transforms import CheckImaged, EstimateSymmetryAxis, SafeLoadImage, SafeLoadImaged, check_image


def _nii(path, arr):
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    return str(path)


def _good(tmp_path, name="good.nii.gz"):
    return _nii(tmp_path / name, np.random.default_rng(0).random((8, 9, 10)).astype(np.float32))


def test_truncated_nifti(tmp_path):
    good = _good(tmp_path)
    data = open(good, "rb").read()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(MedicalDataError, match="truncated.nii.gz") as e:
        SafeLoadImage()(str(bad))
    assert e.value.path == str(bad) and "cannot read" in e.value.reason


def test_truncated_uncompressed_nifti(tmp_path):
    good = _nii(tmp_path / "g.nii", np.random.default_rng(0).random((8, 9, 10)).astype(np.float32))
    data = open(good, "rb").read()
    bad = tmp_path / "cut.nii"
    bad.write_bytes(data[:600])
    with pytest.raises(MedicalDataError, match="cut.nii"):
        SafeLoadImage()(str(bad))


def test_corrupt_nifti_header(tmp_path):
    bad = tmp_path / "garbage.nii.gz"
    bad.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    with pytest.raises(MedicalDataError, match="garbage.nii.gz"):
        SafeLoadImage()(str(bad))


def test_corrupt_and_truncated_dicom(tmp_path):
    from pydicom.data import get_testdata_file

    data = open(get_testdata_file("RG1_UNCI.dcm"), "rb").read()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(MedicalDataError, match="cut.dcm"):
        SafeLoadImage()(str(cut))
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 300)
    with pytest.raises(MedicalDataError, match="junk.dcm"):
        SafeLoadImage()(str(junk))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(MedicalDataError, match="not found"):
        SafeLoadImage()(str(tmp_path / "nope.nii.gz"))
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    with pytest.raises(MedicalDataError, match=r"empty.nii.gz.*0 bytes"):
        SafeLoadImaged("image")({"image": str(empty)})


def test_wrong_dimensionality(tmp_path):
    four_d = _nii(tmp_path / "4d.nii.gz", np.random.default_rng(0).random((5, 6, 7, 3)).astype(np.float32))
    img = SafeLoadImage()(four_d)  # a 4D file loads as (3, 5, 6, 7) channels-first ...
    assert img.shape == (3, 5, 6, 7)
    with pytest.raises(MedicalDataError, match=r"4d.nii.gz.*expected 2 spatial dims"):
        SafeLoadImage(spatial_dims=2)(four_d)  # ... but is not the 2D image the pipeline wants
    with pytest.raises(MedicalDataError, match="spatial dims"):
        check_image(torch.zeros(1, 4, 4, 4, 4) + torch.arange(4.0), "x.nii", spatial_dims=3)
    with pytest.raises(MedicalDataError, match="2D or 3D"):
        EstimateSymmetryAxis()(torch.rand(1, 4, 4, 4, 4))


def test_constant_and_nan_images(tmp_path):
    const = _nii(tmp_path / "const.nii.gz", np.full((6, 6, 6), 7.0, np.float32))
    with pytest.raises(MedicalDataError, match=r"const.nii.gz.*constant"):
        SafeLoadImage()(const)
    assert SafeLoadImage(allow_constant=True)(const).shape == (1, 6, 6, 6)  # e.g. empty label maps
    arr = np.random.default_rng(0).random((6, 6, 6)).astype(np.float32)
    arr[1, 2, 3] = np.nan
    nan = _nii(tmp_path / "nan.nii.gz", arr)
    with pytest.raises(MedicalDataError, match=r"nan.nii.gz.*1 NaN"):
        SafeLoadImaged("image")({"image": nan})
    with pytest.raises(MedicalDataError, match="non-finite"):
        CheckImaged("image")({"image": torch.tensor([[[float("inf"), 0.0]]])})


HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]


def _csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def test_csv_missing_column(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    _csv(root / "train.csv", [h for h in HEADER if h != "Edema"], [])
    with pytest.raises(MedicalDataError, match=r"train.csv.*missing column.*Edema"):
        read_chexpert(root)


def test_csv_names_missing_file(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    rel = "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
    _csv(root / "train.csv", HEADER, [[rel, "Male", "50", "Frontal", "PA"] + [""] * 14])
    with pytest.raises(MedicalDataError, match=r"train.csv: line 2: image file .*view1_frontal.jpg.*not found") as e:
        read_chexpert(root)
    assert e.value.path.endswith("train.csv")
    assert len(read_chexpert(root, check_files=False)) == 1


def test_csv_bad_label_value_and_missing_csv(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    rel = "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
    _csv(root / "train.csv", HEADER, [[rel, "Male", "50", "Frontal", "PA", "2"] + [""] * 13])
    with pytest.raises(MedicalDataError, match=r"train.csv: line 2, column 'No Finding': label '2'"):
        read_chexpert(root, check_files=False)
    with pytest.raises(MedicalDataError, match="valid.csv"):
        read_chexpert(root, "valid")


def test_skip_bad_samples_counts_and_logs(tmp_path, caplog):
    files = [_good(tmp_path, f"ok{i}.nii.gz") for i in range(3)]
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(open(files[0], "rb").read()[:200])
    data = [{"image": files[0]}, {"image": str(bad)}, {"image": files[1]}, {"image": files[2]}]
    ds = SkipBadSamples(Dataset(data, transform=Compose([SafeLoadImaged("image", spatial_dims=3)])))
    caplog.set_level(logging.WARNING)
    got = [ds[i]["image"].meta["filename_or_obj"] for i in range(len(ds))]
    assert ds.skipped == 1 and got[1] == files[1]  # replaced by the next good sample
    assert ds.failures[0][0] == 1 and ds.failures[0][1] == str(bad)
    assert any("broken.nii.gz" in r.getMessage() and "skipping" in r.getMessage() for r in caplog.records)
    batches = list(DataLoader(ds, batch_size=2, num_workers=0))
    assert sum(b["image"].shape[0] for b in batches) == 4 and ds.skipped == 2


def test_skip_bad_samples_reraises_other_errors_and_gives_up(tmp_path):
    class Boom(TorchDataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise KeyError("a bug, not bad data")

    with pytest.raises(KeyError):
        SkipBadSamples(Boom())[0]

    class AllBad(TorchDataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            raise MedicalDataError("bad", f"f{i}")

    ds = SkipBadSamples(AllBad())
    with pytest.raises(MedicalDataError, match="bad samples in a row"):
        ds[0]
    assert ds.skipped == 3
