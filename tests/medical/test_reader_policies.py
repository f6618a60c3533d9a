"""Bad-input policies of the medical readers: labels are never changed silently, one bad file costs one file."""

from __future__ import annotations

import gzip
import logging
import pickle
import time
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from mfassl_medical.data import CHEXPERT_LABELS, MedicalDataError, find_brats_cases, read_chexpert
from mfassl_medical.errors import (
    CorruptImageError,
    DatasetLayoutError,
    ImageMismatchError,
    ImageTooLargeError,
    LabelValueError,
    TableError,
)
from mfassl_medical.transforms import ConvertBraTSLabels, ConvertBraTSLabelsd, SafeLoadImage, SafeLoadImaged

HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]
I_CARD = CHEXPERT_LABELS.index("Cardiomegaly")


def _rel(p: int) -> str:
    return f"CheXpert-v1.0-small/train/patient{p:05d}/study1/view1_frontal.jpg"


def _fields(p: int, view: str = "Frontal", card: str = "1.0") -> list[str]:
    lab = [""] * len(CHEXPERT_LABELS)
    lab[I_CARD] = card
    return [_rel(p), "Female", "60", view, "AP", *lab]


def _line(fields: list[str]) -> str:
    return ",".join(f'"{f}"' if ("," in f or "\n" in f) else f for f in fields)


def _write(tmp_path, lines: list[str]):
    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


# ------------------------------------------------------------------ CheXpert: bad rows and tables
def _cut_off():
    return _line(_fields(2))[: len(_rel(2)) + len(",Female,60,Frontal,AP,,")]  # the line ends after 'Enlarged ...'


def _with(i: int, value: str, view: str = "Frontal") -> str:
    f = _fields(2, view=view)
    f[i] = value
    return _line(f)


BAD_ROWS = {
    "cut_off_line": (_cut_off, "Cardiomegaly", "cut off"),
    "nan_cell": (lambda: _with(5 + I_CARD, "nan"), "Cardiomegaly", "'nan'"),
    "NaN_cell": (lambda: _with(5 + I_CARD, "NaN"), "Cardiomegaly", "'NaN'"),
    "inf_cell": (lambda: _with(5 + I_CARD, "inf"), "Cardiomegaly", "'inf'"),
    "unknown_view": (lambda: _with(3, "Latreal"), "Frontal/Lateral", "'Latreal'"),
    "blank_view": (lambda: _with(3, ""), "Frontal/Lateral", "neither"),
    "nan_age": (lambda: _with(2, "nan"), "Age", "'nan'"),
    "too_many_fields": (lambda: _line(_fields(2)) + ",1.0", None, "fields where the header has"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_chexpert_bad_row_names_csv_line_column(tmp_path, case):
    make, column, text = BAD_ROWS[case]
    root = _write(tmp_path, [",".join(HEADER), _line(_fields(1)), make(), _line(_fields(3))])
    with pytest.raises(TableError) as e:
        read_chexpert(root, check_files=False)
    err = e.value
    assert isinstance(err, MedicalDataError) and err.path.endswith("train.csv")
    assert err.row == 3 and "line 3" in str(err) and text in str(err)
    if column is not None:
        assert err.column == column and repr(column) in str(err)
    # skip-and-count when asked for: the other rows are read, with their labels unchanged
    recs = read_chexpert(root, check_files=False, on_bad_row="skip")
    assert [r["patient"] for r in recs] == ["patient00001", "patient00003"]
    assert all(r["label"][I_CARD] == 1.0 for r in recs)


def test_chexpert_line_numbers_count_editor_lines(tmp_path):
    """A quoted multi-line cell before the bad row: the error gives the line an editor shows."""
    header = HEADER + ["Note"]
    ok = _line(_fields(1) + ["first line\nsecond line"])  # one row over lines 2-3
    bad = _line(_with(5 + I_CARD, "NaN").split(",") + ["x"])
    root = _write(tmp_path, [",".join(header), ok, bad])
    with pytest.raises(TableError, match=r"train.csv: line 4, column 'Cardiomegaly'") as e:
        read_chexpert(root, check_files=False)
    assert e.value.row == 4 and e.value.value == "NaN"


def test_chexpert_skip_warns_with_count_and_first_rows(tmp_path, caplog):
    lines = [",".join(HEADER)] + [_line(_fields(p)) for p in range(1, 6)]
    lines[2] = _with(5 + I_CARD, "nan")
    lines[4] = _with(3, "Oblique")
    root = _write(tmp_path, lines)
    caplog.set_level(logging.WARNING)
    recs = read_chexpert(root, check_files=False, on_bad_row="skip")
    assert len(recs) == 3
    msg = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(msg) == 1 and "skipped 2 bad row(s) of 5" in msg[0] and "line 3" in msg[0] and "line 5" in msg[0]
    with pytest.raises(ValueError, match="on_bad_row"):
        read_chexpert(root, check_files=False, on_bad_row="ignore")


def test_chexpert_skip_still_refuses_when_nothing_is_left(tmp_path):
    root = _write(tmp_path, [",".join(HEADER), _with(3, "Upside-down"), _cut_off()])
    with pytest.raises(TableError, match="no image record left: all 2 rows are bad"):
        read_chexpert(root, check_files=False, on_bad_row="skip")


def test_chexpert_duplicated_label_column(tmp_path):
    header = HEADER + ["Cardiomegaly"]
    root = _write(tmp_path, [",".join(header), _line(_fields(1, card="0.0") + ["1.0"])])
    with pytest.raises(TableError, match=r"train.csv: line 1: column 'Cardiomegaly' appears twice") as e:
        read_chexpert(root, check_files=False, on_bad_row="skip")  # a bad table is never skipped
    assert e.value.column == "Cardiomegaly" and e.value.row == 1


def test_chexpert_header_only_and_missing_column(tmp_path):
    root = _write(tmp_path, [",".join(HEADER)])
    with pytest.raises(TableError, match=r"train.csv: the CSV holds only the header line"):
        read_chexpert(root, check_files=False)
    root = _write(tmp_path, [",".join(h for h in HEADER if h != "Frontal/Lateral"), "x"])
    with pytest.raises(TableError, match=r"train.csv: missing column\(s\) \['Frontal/Lateral'\]") as e:
        read_chexpert(root, check_files=False)
    assert e.value.column == "Frontal/Lateral"


def test_chexpert_good_values_and_string_switches(tmp_path):
    rows = [_line(_fields(1, card="1")), _line(_fields(2, view="lateral ", card="-1.0")),
            _line(_fields(3, card="0.0")), ""]  # a trailing empty line is no row
    root = _write(tmp_path, [",".join(HEADER), *rows])
    recs = read_chexpert(root, check_files=False, frontal_only="false", uncertainty="ones")
    assert [r["view"] for r in recs] == ["frontal", "lateral", "frontal"]
    assert [float(r["label"][I_CARD]) for r in recs] == [1.0, 1.0, 0.0]
    assert len(read_chexpert(root, check_files=False, frontal_only="True")) == 2
    with pytest.raises(ValueError, match="frontal_only"):
        read_chexpert(root, check_files=False, frontal_only="maybe")


def test_errors_pickle_with_details():
    e = TableError("line 3: bad", "/x/train.csv", row=3, column="Edema", value="nan")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is TableError and (back.row, back.column, back.value, back.path) == (3, "Edema", "nan", "/x/train.csv")
    assert str(back) == str(e)


# ------------------------------------------------------------------ BraTS label maps
def _seg_meta(values, dtype=torch.float32):
    t = torch.tensor(values, dtype=dtype).reshape(1, -1, 1, 1)
    return MetaTensor(t, meta={"filename_or_obj": "/data/BraTS2021_00042/BraTS2021_00042_seg.nii.gz"})


BAD_MAPS = {
    "label_7": ([0, 1, 2, 7], "auto", "[7]"),
    "mask_0_255": ([0, 255, 255, 0], "auto", "0/255 mask"),
    "negative": ([0, -1, 2, 4], "auto", "[-1]"),
    "both_3_and_4": ([0, 1, 3, 4], "auto", "both 3 and 4"),
    "rescaled_float": ([0.0, 0.25, 0.5, 1.0], "auto", "non-integer"),
    "nan": ([0.0, float("nan"), 1.0, 2.0], "auto", "NaN"),
    "3_in_2021": ([0, 1, 2, 3], "2021", "[3]"),
    "4_in_2023": ([0, 1, 2, 4], "2023", "[4]"),
}


@pytest.mark.parametrize("case", sorted(BAD_MAPS))
def test_convert_brats_labels_refuses_unknown_values(case):
    values, version, text = BAD_MAPS[case]
    with pytest.raises(LabelValueError) as e:
        ConvertBraTSLabels(version=version)(_seg_meta(values))
    assert e.value.path.endswith("BraTS2021_00042_seg.nii.gz") and text in str(e.value)
    with pytest.raises(LabelValueError, match=text.replace("[", r"\[").replace("]", r"\]")):
        ConvertBraTSLabelsd("label", version=version)({"label": np.asarray(values, np.float64).reshape(1, 4, 1, 1)})


@pytest.mark.parametrize("version,values", [("auto", [0, 1, 2, 4]), ("auto", [0, 1, 2, 3]), ("2021", [0, 1, 2, 4]),
                                            ("2023", [0, 1, 2, 3]), ("auto", [0, 0, 0, 0])])
def test_convert_brats_labels_accepts_documented_sets(version, values):
    out = ConvertBraTSLabels(regions=("ET", "TC", "WT"), version=version)(_seg_meta(values))
    et = 1.0 if values[-1] in (3, 4) else 0.0
    assert out[:, 3, 0, 0].tolist() == [et, et, et] and out[:, 2, 0, 0].tolist() == [0.0, 0.0, float(values[2] == 2)]


def _nii(path, arr, affine=None):
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))
    return str(path)


def _case(root, name="BraTS2021_00000", shape=(6, 7, 5), seg_shape=None):
    d = root / name
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    imgs = [_nii(d / f"{name}_{m}.nii.gz", rng.random(shape).astype(np.float32)) for m in ("t1", "t1ce", "t2", "flair")]
    lab = np.zeros(seg_shape or shape, np.uint8)
    lab[1, 1, 1] = 4
    return imgs, _nii(d / f"{name}_seg.nii.gz", lab)


def test_brats_seg_on_another_grid_fails_at_load(tmp_path):
    _case(tmp_path, seg_shape=(6, 7, 4))
    case = find_brats_cases(tmp_path)[0]
    t = Compose([LoadImaged(["image", "label"], image_only=True), EnsureChannelFirstd(["image", "label"]),
                 ConvertBraTSLabelsd("label")])
    with pytest.raises(Exception) as e:
        t(case)
    err = e.value if isinstance(e.value, ImageMismatchError) else e.value.__cause__
    assert isinstance(err, ImageMismatchError) and err.path.endswith("BraTS2021_00000_seg.nii.gz")
    assert "(6, 7, 4)" in str(err) and "(6, 7, 5)" in str(err)


def test_brats_real_seg_file_with_255_names_the_file(tmp_path):
    _, seg = _case(tmp_path)
    _nii(seg, (np.arange(6 * 7 * 5).reshape(6, 7, 5) % 2 * 255).astype(np.uint8))
    d = SafeLoadImaged("label", allow_constant=True)({"label": seg})
    with pytest.raises(LabelValueError, match=r"BraTS2021_00000_seg.nii.gz: .*\[255\]"):
        ConvertBraTSLabelsd("label")(d)


def test_brats_dicom_case_folder_does_not_vanish(tmp_path, caplog):
    _case(tmp_path)
    dcm = tmp_path / "BraTS2021_00001"
    for mod in ("T1", "FLAIR"):
        (dcm / mod).mkdir(parents=True)
        (dcm / mod / "IM0001.dcm").write_bytes(b"\x00" * 132)
    with pytest.raises(DatasetLayoutError, match=r"BraTS2021_00001: case folder holds no BraTS NIfTI.*2 sub-folder"):
        find_brats_cases(tmp_path)
    caplog.set_level(logging.WARNING)
    cases = find_brats_cases(tmp_path, on_incomplete="skip")
    assert [c["case"] for c in cases] == ["BraTS2021_00000"]
    assert any("skipped 1 of 2 case folder(s)" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ multi-file images: name the one file
def _four(tmp_path, shape=(8, 9, 10)):
    rng = np.random.default_rng(1)
    return [_nii(tmp_path / f"c_{m}.nii.gz", rng.random(shape).astype(np.float32)) for m in ("t1", "t1ce", "t2", "flair")]


def _break(files, k, how):
    if how == "truncated":
        data = open(files[k], "rb").read()
        open(files[k], "wb").write(data[: len(data) // 2])
    elif how == "shape":
        _nii(files[k], np.random.default_rng(2).random((8, 9, 11)).astype(np.float32))
    elif how == "affine":
        _nii(files[k], np.random.default_rng(2).random((8, 9, 10)).astype(np.float32), np.diag([2.0, 1.0, 1.0, 1.0]))
    elif how == "truncated_nii":
        arr = np.random.default_rng(2).random((8, 9, 10)).astype(np.float32)
        path = files[k].replace(".nii.gz", ".nii")
        _nii(path, arr)
        data = open(path, "rb").read()
        open(path, "wb").write(data[:1000])
        files[k] = path
    return files[k]


@pytest.mark.parametrize("k", [0, 2])
@pytest.mark.parametrize("how,kind", [("truncated", CorruptImageError), ("shape", ImageMismatchError),
                                      ("affine", ImageMismatchError), ("truncated_nii", CorruptImageError)])
def test_multi_file_load_names_the_one_file(tmp_path, how, kind, k):
    files = _four(tmp_path)
    bad = _break(files, k, how)
    with pytest.raises(kind) as e:
        SafeLoadImaged("image")({"image": files})
    assert e.value.path == bad
    others = [f for f in files if f != bad]
    assert not any(str(e.value).startswith(o) for o in others) and "may be corrupt" not in str(e.value).split(":")[0]
    assert SafeLoadImage()(others).shape == (3, 8, 9, 10)  # the good files still load together


# ------------------------------------------------------------------ voxel budget from the header
def _huge_header(path, shape=(1000, 1000, 1000)):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float32)
    hdr["vox_offset"] = 352
    raw = hdr.binaryblock + b"\x00" * 4
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return str(path)


@pytest.mark.parametrize("name", ["huge.nii.gz", "huge.nii"])
def test_voxel_budget_refuses_from_the_header(tmp_path, monkeypatch, name):
    import monai.transforms

    path = _huge_header(tmp_path / name)
    assert (tmp_path / name).stat().st_size < 400

    def no_read(*a, **k):
        raise AssertionError("the data must not be read")

    monkeypatch.setattr(monai.transforms.LoadImage, "__call__", no_read)
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(ImageTooLargeError) as e:
        SafeLoadImage()(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert time.perf_counter() - t0 < 5.0 and peak < 20 * 2**20
    err = e.value
    assert err.path == path and err.shape == (1000, 1000, 1000) and err.voxels == 10**9 and err.budget == 512**3
    assert "(1000, 1000, 1000)" in str(err) and "134,217,728" in str(err)


def test_voxel_budget_option_and_env(tmp_path, monkeypatch):
    good = _nii(tmp_path / "g.nii.gz", np.random.default_rng(0).random((8, 9, 10)).astype(np.float32))
    with pytest.raises(ImageTooLargeError, match="720 voxels, over the voxel budget of 700"):
        SafeLoadImaged("image", max_voxels="700")({"image": good})  # as a command line hands it over
    assert SafeLoadImage(max_voxels="720")(good).shape == (1, 8, 9, 10)
    monkeypatch.setenv("MFASSL_MAX_VOXELS", "100")
    with pytest.raises(ImageTooLargeError, match="budget of 100"):
        SafeLoadImage()(good)
    monkeypatch.setenv("MFASSL_MAX_VOXELS", "lots")
    with pytest.raises(ValueError, match="MFASSL_MAX_VOXELS"):
        SafeLoadImage()(good)
    with pytest.raises(ValueError, match="max_voxels"):
        SafeLoadImage(max_voxels="-3")


# ------------------------------------------------------------------ RGBA: alpha is composited on black
def _chest_like(size=64, c0=32.0):
    """Two lungs and a heart symmetric about column ``c0``; black in the cut-off corner ``x + y < 40``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    img = sum(200 * np.exp(-((xx - c0 + s) ** 2 + (yy - 24) ** 2) / 40) for s in (8, -8))
    img += 120 * np.exp(-((xx - c0) ** 2) / 20 - (yy - 44) ** 2 / 80)
    corner = (xx + yy) < 40
    img[corner] = 0
    return np.clip(img, 0, 255).astype(np.uint8), np.where(corner, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_and_keeps_the_axis(tmp_path, mode):
    """A transparent corner (alpha 0 where the image is black): the axis must stay that of the grey image
    (averaged in as intensity, the alpha plane tilted the axis by 37 degrees with confidence 1)."""
    from PIL import Image

    from mfassl_medical.axis import estimate_axis

    grey, alpha = _chest_like()
    if mode == "RGBA":
        ref = np.stack([grey] * 3, -1)
        Image.fromarray(ref, "RGB").save(tmp_path / "ref.png")
        Image.fromarray(np.dstack([ref, alpha]), "RGBA").save(tmp_path / "a.png")
    else:
        Image.fromarray(grey, "L").save(tmp_path / "ref.png")
        Image.fromarray(np.dstack([grey, alpha]), "LA").save(tmp_path / "a.png")
    a, r = SafeLoadImage()(str(tmp_path / "a.png")), SafeLoadImage()(str(tmp_path / "ref.png"))
    assert a.shape == r.shape and torch.equal(a.as_tensor(), r.as_tensor())
    assert a.meta["alpha"] == "composited on black"
    ax_a, ax_r = (estimate_axis(x, x.affine, channel_first=True) for x in (a, r))
    assert np.allclose(ax_a.normal, ax_r.normal, atol=1e-6) and abs(ax_a.offset - ax_r.offset) < 1e-4
    assert abs(ax_a.normal[0]) > 0.9999 and abs(abs(ax_a.offset) - 32.0) < 0.5  # the true, vertical axis
    from mfassl_medical.cli_axis import load_image

    data, _ = load_image(str(tmp_path / "a.png"))  # the axis command line reads it the same way
    assert data.shape == tuple(r.shape) and np.array_equal(data, r.numpy())


# ------------------------------------------------------------------ DICOM series with a truncated slice
def _series(folder, n=4):
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    folder.mkdir()
    uid = generate_uid()
    for k in range(n):
        ds = src.copy()
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(src.ImagePositionPatient[0]), float(src.ImagePositionPatient[1]),
                                   float(src.ImagePositionPatient[2]) + 5.0 * k]
        ds.PixelData = (src.pixel_array + 10 * k).astype(src.pixel_array.dtype).tobytes()
        ds.save_as(str(folder / f"slice{k}.dcm"))
    return [folder / f"slice{k}.dcm" for k in range(n)]


def test_dicom_series_with_truncated_slice_is_refused_unless_missing_slices_are_allowed(tmp_path, caplog):
    """Before: read without the slice by default, the warning only in the log."""
    files = _series(tmp_path / "series")
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) - 8000])
    with pytest.raises(CorruptImageError, match=r"series: DICOM slice .*slice2.dcm is truncated.*series is refused"):
        SafeLoadImage()(str(tmp_path / "series"))  # the default refuses the series, naming the slice
    caplog.set_level(logging.WARNING)
    img = SafeLoadImage(on_bad_slice="warn")(str(tmp_path / "series"))
    assert img.shape[-1] == 3  # read without the bad slice ...
    msgs = [r.getMessage() for r in caplog.records if "slice2.dcm" in r.getMessage()]
    assert len(msgs) == 1 and "truncated" in msgs[0] and "pixel data holds" in msgs[0]  # ... and said so
    assert len(img.meta["missing_slices"]) == 1 and "slice2.dcm is truncated" in img.meta["missing_slices"][0]
    with pytest.raises(CorruptImageError, match=r"slice2.dcm: the DICOM file is truncated"):
        SafeLoadImage(on_bad_slice="warn")(str(files[2]))  # one file alone cannot be read without its pixels


def test_dicom_series_intact_reads_without_warning(tmp_path, caplog):
    _series(tmp_path / "series")
    caplog.set_level(logging.WARNING, logger="mfassl_medical")
    img = SafeLoadImage()(str(tmp_path / "series"))
    assert img.shape[-1] == 4 and not [r for r in caplog.records if r.name.startswith("mfassl_medical")]


@pytest.mark.parametrize("name", ["RG1_UNCI.dcm", "CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
                                  "emri_small.dcm"])
def test_dicom_header_check_on_real_samples(tmp_path, name):
    """Real pydicom-data files (explicit/implicit VR, big endian, multi-frame): intact ones pass, cut ones are named."""
    import pydicom
    from pydicom.data import get_testdata_file

    from mfassl_medical.transforms import image_header

    path = get_testdata_file(name)
    info = image_header(path)
    assert info["slices"] == [(str(path), None)] and info["voxels"] > 0
    el = pydicom.dcmread(path)["PixelData"]
    cut = tmp_path / name
    cut.write_bytes(open(path, "rb").read()[: el.file_tell + len(el.value) // 2])
    problem = image_header(cut)["slices"][0][1]
    assert problem is not None and f"holds {len(el.value) // 2} of" in problem


# ------------------------------------------------------------------ channels and single-frame images (issue 23)
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_channels_option_gives_the_model_its_channel_count(tmp_path, mode):
    """Before: an RGB(A) PNG loaded as 3 channels among 1-channel images; the batch failed with "stack expects
    each tensor to be equal size", naming no file."""
    from PIL import Image

    grey, alpha = _chest_like()
    rgb = np.stack([grey, (grey * 0.5).astype(np.uint8), (grey * 0.25).astype(np.uint8)], -1)
    img = {"RGB": rgb, "RGBA": np.dstack([rgb, np.full_like(grey, 255)]), "L": grey}[mode]
    Image.fromarray(img, mode).save(tmp_path / "x.png")
    one = SafeLoadImage(spatial_dims=2, channels=1)(str(tmp_path / "x.png"))
    assert tuple(one.shape) == (1, 64, 64)
    want = np.asarray(Image.fromarray(img, mode).convert("L"), np.float32).T  # PIL's own luma, (W, H) as MONAI
    assert np.abs(one[0].numpy() - want).max() <= 1.0  # PIL rounds to uint8
    assert one.meta.get("channels_converted", "none") == ("none" if mode == "L" else
                                                          "3 -> 1 (luma 0.299 R + 0.587 G + 0.114 B)")
    three = SafeLoadImaged("image", spatial_dims=2, channels="3")({"image": str(tmp_path / "x.png")})["image"]
    assert tuple(three.shape) == (3, 64, 64)
    if mode == "L":
        assert torch.equal(three[0], three[2]) and three.meta["channels_converted"] == "1 -> 3 (grey repeated)"


def test_channels_option_refuses_what_it_cannot_convert(tmp_path):
    _nii(tmp_path / "two.nii.gz", np.random.default_rng(0).random((6, 5, 2)).astype(np.float32))
    with pytest.raises(MedicalDataError, match=r"two.nii.gz: the image has 2 channels, the model takes 1"):
        SafeLoadImage(channels=1, ensure_channel_first=True, channel_dim=-1)(str(tmp_path / "two.nii.gz"))
    with pytest.raises(ValueError, match="channels"):
        SafeLoadImage(channels=0)


def test_single_frame_dicom_is_a_2d_image(tmp_path):
    """Before: a one-frame DICOM loaded as (1, H, W, 1); the bundle's axis estimation failed with "matrix must be
    (3, 3), got (4, 4)" and the resize stopped the whole run."""
    from monai.bundle import ConfigParser
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    img = SafeLoadImage(spatial_dims=2, channels=1)(path)
    assert tuple(img.shape) == (1, 128, 128) and tuple(img.affine.shape) == (3, 3)
    assert img.affine[0, 0] == pytest.approx(-0.661468, abs=1e-5)  # the pixel spacing (LPS -> RAS) is kept
    assert tuple(SafeLoadImage()(path).shape) == (1, 128, 128, 1)  # without spatial_dims=2: as MONAI reads it
    from pathlib import Path

    parser = ConfigParser()
    parser.read_config(str(Path(__file__).resolve().parents[2] / "bundles" / "mfassl_chexpert_pretrain" / "configs"
                           / "inference.json"))
    parser["image_size"], parser["global_size"] = [40, 40], [32, 32]
    out = parser.get_parsed_content("preprocessing")({"image": path, "source": path})
    assert tuple(out["image"].shape) == (1, 32, 32)
    assert "error" not in out["image_axis_info"], out["image_axis_info"]  # estimated, not a failure fallback


def test_nan_in_one_modality_names_that_file(tmp_path):
    """Before: NaN in one BraTS modality listed all four files."""
    files = _four(tmp_path)
    arr = np.asarray(nib.load(str(files[2])).dataobj).copy()
    arr[1, 2, 3] = np.nan
    _nii(files[2], arr)
    with pytest.raises(MedicalDataError) as err:
        SafeLoadImage()([str(f) for f in files])
    assert err.value.path == str(files[2]) and "1 non-finite values (1 NaN)" in err.value.reason


# ------------------------------------------------------------------ CheXpert: a repeated row (issue 23)
def test_chexpert_repeated_row_is_a_bad_row(tmp_path):
    """Before: the image got two records, silently."""
    lines = [",".join(HEADER), _line(_fields(1)), _line(_fields(2)), _line(_fields(3)), _line(_fields(2, card="0.0"))]
    root = _write(tmp_path, lines)
    with pytest.raises(TableError, match=r"line 5, column 'Path': '.*patient00002.*' is already listed on line 3; "
                                         r"a repeated row would give one image two records") as err:
        read_chexpert(root, check_files=False)
    assert (err.value.row, err.value.column) == (5, "Path")
    recs = read_chexpert(root, check_files=False, on_bad_row="skip")  # skipped and counted: the first row kept
    assert [r["patient"] for r in recs] == ["patient00001", "patient00002", "patient00003"]
    assert recs[1]["label"][I_CARD] == 1.0
