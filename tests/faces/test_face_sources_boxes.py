"""Landmarks inside given boxes (dlib, FAN) and FAN's batched path on any device.

FAN's weights are not available offline, so FAN runs here with a tiny stand-in network (and a stand-in
detector) through the source's own code path, compared with face-alignment's own
``get_landmarks_from_image(detected_faces=...)`` on the same network (test_face_scoring.py runs the real
2DFAN-4 architecture with random weights from a weights folder).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from mfassl_faces.demo import load_source_faces, transform_face
from mfassl_faces.errors import FaceDataError
from mfassl_faces.metrics import nme
from mfassl_faces.sources import FanLandmarks, create_source



@pytest.fixture(scope="module")
def faces():
    return load_source_faces(include_astronaut=False)


@pytest.fixture(scope="module")
def small_faces(faces):
    """Three real faces about 200 px across, with their 68-point ground truth and its box."""
    out = []
    for f in faces:
        img, pts, _ = transform_face(f.image, f.landmarks, 0.0, 200.0 / max(f.image.shape[:2]))
        out.append((img, pts, (*pts.min(axis=0), *pts.max(axis=0))))
    return out


# ---------------------------------------------------------------------------------------------- dlib
def test_dlib_inside_the_ground_truth_boxes_of_real_faces(faces) -> None:
    src = create_source("dlib")
    for f in faces:
        box = (*f.landmarks.min(axis=0), *f.landmarks.max(axis=0))
        (face,) = src.landmarks_in_boxes(f.image, [box])
        assert face.box == pytest.approx(box) and face.info["box_from"] == "detector"
        assert face.info["box_iou"] >= 0.3 and face.score is not None
        # measured 0.034 (takeo), 0.056 (einstein), 0.066 (breakingbad, a turned head)
        assert nme(face.landmarks[None], f.landmarks[None], "ibug68")[0] < 0.08


def test_dlib_box_without_a_detection_uses_the_given_box() -> None:
    src = create_source("dlib")
    img = np.random.default_rng(0).integers(0, 255, (200, 240, 3), dtype=np.uint8)
    (face,) = src.landmarks_in_boxes(img, [(60.0, 40.0, 160.0, 150.0)])
    assert face.info["box_from"] == "given" and face.score is None
    assert np.isfinite(face.landmarks).all() and face.landmarks.shape == (68, 2)
    centre = face.landmarks.mean(axis=0)
    assert 60 < centre[0] < 160 and 40 < centre[1] < 150
    with pytest.raises(FaceDataError, match=r"face.jpg: face box \(60.0, 40.0, 50.0, 150.0\) needs finite x0 < x1"):
        src.landmarks_in_boxes(img, [(60.0, 40.0, 50.0, 150.0)], path="face.jpg")


# ---------------------------------------------------------------------------------------------- FAN
class TinyFan(nn.Module):
    """A stand-in for 2DFAN-4 with its input and output: ``(B, 3, 256, 256)`` -> a list of ``(B, 68, 64, 64)``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.AvgPool2d(4), nn.Conv2d(3, 68, 5, padding=2))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.body(x)]


class FixedDetector:
    """face-alignment's detector interface with fixed answers per image (by shape)."""

    reference_scale = 195

    def __init__(self, answers: dict) -> None:
        self.answers = answers

    def detect_from_image(self, image: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(b, dtype=np.float64) for b in self.answers[image.shape]]


def _reference(net: nn.Module, flip_input: bool, monkeypatch):
    """face-alignment's own FaceAlignment around ``net`` (its heatmap decoding run as plain Python)."""
    import face_alignment
    import face_alignment.utils as fu

    monkeypatch.setattr(fu, "_get_preds_fromhm", fu._get_preds_fromhm.py_func)
    monkeypatch.setattr(fu, "transform_np", fu.transform_np.py_func)
    fa = face_alignment.FaceAlignment.__new__(face_alignment.FaceAlignment)
    fa.face_alignment_net, fa.flip_input, fa.device, fa.dtype = net, flip_input, "cpu", torch.float32
    fa.max_batch_size, fa.landmarks_type, fa.face_detector = 1, face_alignment.LandmarksType.TWO_D, FixedDetector({})
    return fa


@pytest.mark.parametrize("flip_input", [False, True])
def test_fan_batched_equals_one_by_one_equals_face_alignment(small_faces, monkeypatch, flip_input: bool) -> None:
    net = TinyFan()
    images = [img for img, _, _ in small_faces]
    boxes = [[small_faces[0][2]], [small_faces[1][2], (10.0, 12.0, 90.0, 100.0)], [small_faces[2][2]]]
    src = FanLandmarks(network=net, detect_faces=False, batch_size=3, flip_input=flip_input)
    batched = src.landmarks_in_boxes_batch(images, boxes)
    fa = _reference(net, flip_input, monkeypatch)
    for img, bs, got in zip(images, boxes, batched):
        alone = src.landmarks_in_boxes(img, bs)
        ref = fa.get_landmarks_from_image(img, detected_faces=[np.array(b) for b in bs])
        assert len(got) == len(bs)
        for g, a, r, b in zip(got, alone, ref, bs):
            np.testing.assert_array_equal(g.landmarks, a.landmarks)
            np.testing.assert_array_equal(g.landmarks, r)
            assert g.box == pytest.approx(b) and g.info["box_from"] == "given" and g.schema == "ibug68"


def test_fan_decoding_matches_face_alignment_on_random_heatmaps(monkeypatch) -> None:
    import face_alignment.utils as fu

    from mfassl_faces.sources.fan import decode_heatmaps

    rng = np.random.default_rng(0)
    hm = rng.random((4, 68, 64, 64)).astype(np.float32)
    hm[0, :, 0, 7] = 9.0  # peaks on the border: no quarter-pixel shift there
    hm[1, :, 63, 63] = 9.0
    centres, scales = rng.uniform(40, 400, (4, 2)), rng.uniform(0.4, 3.0, 4)
    pts, peaks = decode_heatmaps(hm, centres, scales)
    monkeypatch.setattr(fu, "_get_preds_fromhm", fu._get_preds_fromhm.py_func)
    monkeypatch.setattr(fu, "transform_np", fu.transform_np.py_func)
    for k in range(4):
        _, ref, scores = fu.get_preds_fromhm(hm[k:k + 1], centres[k], scales[k])
        np.testing.assert_array_equal(pts[k], ref[0])
        np.testing.assert_array_equal(peaks[k], scores[0])


def test_fan_detect_batch_ranks_each_image_and_reads_the_score(small_faces) -> None:
    net = TinyFan()
    (a, _, box_a), (b, _, box_b) = small_faces[:2]
    small = (5.0, 5.0, 45.0, 50.0, 0.7)
    det = FixedDetector({a.shape: [small, (*box_a, 0.99)], b.shape: [(*box_b, 0.9)]})
    src = FanLandmarks(network=net, detector=det, batch_size=2)
    found = src.detect_batch([a, b])
    assert [len(f) for f in found] == [2, 1]
    assert found[0][0].box == pytest.approx(box_a) and found[0][0].score == pytest.approx(0.99)  # largest first
    assert found[0][1].score == pytest.approx(0.7)
    inside = src.landmarks_in_boxes(a, [box_a, small[:4]])
    np.testing.assert_array_equal(found[0][0].landmarks, inside[0].landmarks)
    np.testing.assert_array_equal(found[0][1].landmarks, inside[1].landmarks)
    np.testing.assert_array_equal(src(b)[0].landmarks, found[1][0].landmarks)
    no_detector = FanLandmarks(network=net, detect_faces=False)
    with pytest.raises(RuntimeError, match="without a face detector"):
        no_detector.detect_batch([a])


def test_landmarks_command_batches_fan(small_faces, tmp_path) -> None:
    from mfassl_faces.io import write_image
    from mfassl_faces.landmark_cache import compute_landmarks, read_landmarks_file

    root = tmp_path / "imgs"
    answers = {}
    for k, (img, _, box) in enumerate(small_faces):
        canvas = np.zeros((img.shape[0] + k, img.shape[1], 3), np.uint8)  # distinct shapes for the detector
        canvas[:img.shape[0]] = img
        write_image(root / f"face{k}.png", canvas)
        answers[canvas.shape] = [] if k == 1 else [(*box, 0.9)]
    write_image(root / "broken.png", np.zeros((4, 4, 3), np.uint8))  # too small: one error line, the rest go on
    kwargs = {"network": TinyFan(), "detector": FixedDetector(answers), "batch_size": 2}
    one = compute_landmarks(root, tmp_path / "one.jsonl", "fan", kwargs, batch_size=1)
    many = compute_landmarks(root, tmp_path / "many.jsonl", "fan", kwargs, batch_size=3)
    assert (one["ok"], one["no_face"], one["errors"]) == (many["ok"], many["no_face"], many["errors"]) == (2, 1, 1)
    a, b = read_landmarks_file(tmp_path / "one.jsonl"), read_landmarks_file(tmp_path / "many.jsonl")
    for path in a:
        assert {k: v for k, v in a[path].items() if k != "seconds"} == {k: v for k, v in b[path].items()
                                                                           if k != "seconds"}
    assert "too small" in b["broken.png"]["error"]
    with pytest.raises(ValueError, match="cannot go with 2 workers"):
        compute_landmarks(root, tmp_path / "x.jsonl", "fan", kwargs, workers=2, batch_size=2)


def test_device_options_are_checked_before_any_file(tmp_path, capsys) -> None:
    from mfassl_faces import cli_axis, cli_landmarks

    for main, argv in [(cli_landmarks.main, [str(tmp_path), "--source", "fan", "--out", str(tmp_path / "o.jsonl"),
                                             "--device", "cuda:99"]),
                       (cli_landmarks.main, [str(tmp_path), "--source", "fan", "--out", str(tmp_path / "o.jsonl"),
                                             "--device", "not-a-device"]),
                       (cli_axis.main, [str(tmp_path / "missing.png"), "--landmarks", "fan", "--device", "cuda:99"])]:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and "'--device'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli_landmarks.main([str(tmp_path), "--source", "fan", "--out", str(tmp_path / "o.jsonl"), "--device", "cpu",
                            "--workers", "2", "--batch-size", "4"])
    assert exit_.value.code == 2 and "one process" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
    from mfassl_faces import cli_tasks

    with pytest.MonkeyPatch.context() as mp:  # as on a machine with a GPU
        mp.setattr(cli_tasks, "check_device", lambda name: "cuda:0")
        with pytest.raises(SystemExit) as exit_:
            cli_tasks.main(["pretrain", "--images", str(tmp_path), "--landmark-source", "fan", "--landmark-workers", "2"])
    assert exit_.value.code == 2
    assert "FAN on cuda:0 runs in one process; drop --landmark-workers 2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli_tasks.main(["benchmark", "--device", "not-a-device", "--data", str(tmp_path / "missing")])
    assert exit_.value.code == 2 and "'--device'" in capsys.readouterr().err
