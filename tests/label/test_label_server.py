"""Integration: the real MONAI Label 0.8.5 server (in ``.venv-label``) serves the segmentation bundle over HTTP.

A tiny SwinUNETR is trained for two steps on the demo data through the bundle's ``train.json`` (the command
:func:`train_bundle` builds, run in the test's interpreter), the
``monaibundle`` app is copied out of the wheel, the server starts offline on 127.0.0.1, ``/info/`` lists the model,
``POST /infer`` returns a label volume for a lesion case, and SIGTERM stops the server. A two-step model does not
segment: the test checks what is honest to check (shape, affine, labels within the bundle's label set) and records
the whole-tumour Dice it measured against the demo mask (``-rA`` or the JUnit report show it).

The same server start also checks what the MFASSL app guards: ids that name files outside the studies folder
(``PUT /datastore/image``, ``PUT /datastore/label``, ``POST /infer``) answer 400 and write or read nothing there,
unknown models and images answer 404, a bad ``params`` JSON 400, and CORS answers only loopback origins; a
``Host`` that is not this server answers 400 (DNS rebinding), a state-changing request from a foreign ``Origin``
403 before it runs, and a label that is not a label map of its image (random bytes, another grid, a value outside
the bundle's labels) 400, leaving the stored label as it was.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from mfassl_medical.label_app import (
    BUNDLE_NAME,
    TINY_NETWORK,
    infer,
    prepare_label_app,
    start_label_server,
    stop_label_server,
    train_bundle,
    wait_until_ready,
    write_label_studies,
)
from mfassl_medical.segmentation import LABEL_NAMES

LABEL_VENV = Path(os.environ.get("MFASSL_LABEL_VENV", Path(__file__).resolve().parents[2] / ".venv-label"))

pytestmark = [
    pytest.mark.label,
    pytest.mark.skipif(not (LABEL_VENV / "bin" / "monailabel").is_file(),
                       reason=f"MONAI Label venv not found at {LABEL_VENV} (create it with `make label-venv`, or set "
                              "MFASSL_LABEL_VENV)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
          timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; returns (status, headers with lower-case names, body) for error statuses too."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def _multipart(field: str, filename: str, data: bytes, extra: dict[str, str] | None = None
               ) -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in (extra or {}).items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), {
        "Content-Type": f"multipart/form-data; boundary={boundary}"}


def _nifti_bytes(arr: np.ndarray, affine: np.ndarray) -> bytes:
    """``arr`` as the bytes of a ``.nii.gz`` file."""
    import gzip
    import io

    import nibabel as nib

    buf = io.BytesIO()
    img = nib.Nifti1Image(arr, affine)
    img.to_file_map(nib.Nifti1Image.make_file_map({"image": buf, "header": buf}))
    return gzip.compress(buf.getvalue())


def _check_guards(url: str, port: int, studies: Path, lesion: str, healthy: str, sentinel_root: Path) -> None:
    """Traversal, 400/404, Host, Origin, label and CORS cases against the running server (no inference runs)."""
    import nibabel as nib

    nifti = (studies / "labels" / "final" / f"{healthy}.nii.gz").read_bytes()
    before = sorted(p.name for p in sentinel_root.iterdir())
    cases = [  # (method, path and query, multipart field or None, expected status)
        ("PUT", "/datastore/image?image=../../mfassl_escape", "file", 400),
        ("PUT", "/datastore/image?image=%2Ftmp%2Fmfassl_escape", "file", 400),
        ("PUT", f"/datastore/label?image={lesion}&tag=../../mfassl_escape", "label", 400),
        ("PUT", "/datastore/label?image=..%2F..%2Fmfassl_escape&tag=final", "label", 400),
        ("PUT", "/datastore/label?image=NoSuchCase&tag=final", "label", 404),
        ("POST", f"/infer/{BUNDLE_NAME}?image=../../etc/passwd&output=image", None, 400),
        ("POST", f"/infer/{BUNDLE_NAME}?image=%2Fetc%2Fpasswd&output=image", None, 400),
        ("POST", f"/infer/{BUNDLE_NAME}?image=NoSuchCase&output=image", None, 404),
        ("POST", f"/infer/no_such_model?image={lesion}&output=image", None, 404),
        ("GET", "/datastore/image?image=..%2Fserver.log", None, 400),
        ("GET", "/datastore/image?image=NoSuchCase", None, 404),
    ]
    for method, path, field, want in cases:
        body, headers = _multipart(field, "x.nii.gz", nifti) if field else (b"" if method != "GET" else None, {})
        status, _, text = _call(method, url + path, body, headers)
        assert status == want, (method, path, status, text[:300])
        assert text.startswith(b"{") and b"detail" in text, text[:300]
    status, _, text = _call("POST", f"{url}/infer/{BUNDLE_NAME}?image={lesion}", b"params=%7Bnot-json",
                            {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400 and b"JSON" in text, (status, text[:300])
    body, headers = _multipart("file", "evil.py", b"print(1)")  # no image id: the datastore checks the file's name
    status, _, text = _call("PUT", f"{url}/datastore/image", body, headers)
    assert status == 400 and b"extension" in text and not (studies / "evil.py").exists(), (status, text[:300])
    assert sorted(p.name for p in sentinel_root.iterdir()) == before  # nothing written beside the studies
    assert not list(sentinel_root.parent.glob("mfassl_escape*")) and not Path("/tmp/mfassl_escape.nii.gz").exists()

    # a label saved the ordinary way lands in the studies folder
    body, headers = _multipart("label", f"{healthy}.nii.gz", nifti)
    status, _, text = _call("PUT", f"{url}/datastore/label?image={healthy}&tag=mfassl_test", body, headers)
    assert status == 200, text[:300]
    assert (studies / "labels" / "mfassl_test" / f"{healthy}.nii.gz").read_bytes() == nifti

    # Host: DNS rebinding (a foreign name pointing at 127.0.0.1) is refused; the loopback names are answered
    for host, want in ((f"evil.example:{port}", 400), (f"localhost:{port}", 200), (f"127.0.0.1:{port}", 200)):
        status, _, text = _call("GET", f"{url}/info/", headers={"Host": host})
        assert status == want, (host, status, text[:300])
    assert b"is not this server" in _call("GET", f"{url}/datastore/?output=all", headers={"Host": "evil.example"})[2]
    # Origin: a foreign page may not change anything (inference, upload, removal); nothing ran or changed
    final = studies / "labels" / "final" / f"{lesion}.nii.gz"
    kept = final.read_bytes()
    evil = {"Origin": "http://evil.example"}
    status, _, text = _call("POST", f"{url}/infer/{BUNDLE_NAME}?image={lesion}&output=image", b"", evil)
    assert status == 403 and b"may not POST" in text, (status, text[:300])
    body, headers = _multipart("label", "x.nii.gz", nifti)
    status, _, text = _call("PUT", f"{url}/datastore/label?image={lesion}&tag=final", body, {**headers, **evil})
    assert status == 403 and final.read_bytes() == kept, (status, text[:300])
    status, _, text = _call("DELETE", f"{url}/datastore/label?id={lesion}&tag=final", None, evil)
    assert status == 403 and final.read_bytes() == kept, (status, text[:300])
    # a label must be a label map of its image: refused with the problem named, the stored label unchanged
    bad_values = np.asarray(nib.load(str(final)).dataobj).astype(np.uint8)
    bad_values[0, 0, 0] = 7
    for data, says in ((os.urandom(3000), b"not a readable NIfTI"),
                       (_nifti_bytes(np.zeros((5, 5, 5), np.uint8), np.eye(4)), b"its image's grid is"),
                       (_nifti_bytes(bad_values, nib.load(str(final)).affine), b"not among the label values")):
        body, headers = _multipart("label", "x.nii.gz", data)
        status, _, text = _call("PUT", f"{url}/datastore/label?image={lesion}&tag=final", body, headers)
        assert status == 400 and says in text, (status, text[:300])
        assert final.read_bytes() == kept

    # CORS: a foreign origin gets no allow header (simple and preflight requests); a loopback origin does
    for origin, allowed in (("http://evil.example", False), (f"http://127.0.0.1:{port}", True),
                            (f"http://localhost:{port}", True), ("http://127.0.0.1:1", False)):
        _, h, _ = _call("GET", f"{url}/info/", headers={"Origin": origin})
        assert h.get("access-control-allow-origin") == (origin if allowed else None), (origin, h)
        _, h, _ = _call("OPTIONS", f"{url}/datastore/label", headers={
            "Origin": origin, "Access-Control-Request-Method": "PUT"})
        assert h.get("access-control-allow-origin") == (origin if allowed else None), (origin, h)


def _bundle_run_in_this_interpreter(cmd: list[str], check: bool = False, **_: object):
    """``subprocess.run`` for :func:`train_bundle`'s ``python -m monai.bundle ...`` command: its arguments run
    here through ``fire`` as MONAI's entry point parses them (no second torch and MONAI import: 12 of the training's
    19 CPU seconds); any other command is refused."""
    import subprocess

    from cli_runner import run_monai_bundle

    assert cmd[1:3] == ["-m", "monai.bundle"], cmd
    proc = run_monai_bundle(*cmd[3:])
    if check and proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout, proc.stderr)
    return proc


def test_server_infers_a_label_volume(tmp_path, record_property, capsys, monkeypatch):
    import nibabel as nib

    import types

    import mfassl_medical.label_app as label_app

    monkeypatch.setattr(label_app, "subprocess", types.SimpleNamespace(run=_bundle_run_in_this_interpreter))
    model = train_bundle(tmp_path / "train", overrides={**TINY_NETWORK, "epochs": 1, "epoch_length": 2, "max_cases": 3,
                                                        "val_interval": 2, "learning_rate": 1e-3}, timeout=600)
    monkeypatch.undo()
    app = prepare_label_app(tmp_path, model, LABEL_VENV, network=TINY_NETWORK)
    assert (app / "model" / BUNDLE_NAME / "models" / "model.pt").is_file()
    studies = tmp_path / "studies"
    lesion, healthy = "BraTS2021_00000", "BraTS2021_00002"
    assert write_label_studies(studies, cases=[lesion, healthy]) == [lesion, healthy]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    proc = start_label_server(app, studies, LABEL_VENV, tmp_path / "home", port=port, log_file=log)
    try:
        info = wait_until_ready(url, proc, timeout=240, log_file=log)
        assert BUNDLE_NAME in info["models"]
        labels = info["models"][BUNDLE_NAME]["labels"]
        assert {int(v) for v in labels.values()} == {k for k in LABEL_NAMES if k}
        with urllib.request.urlopen(f"{url}/datastore/?output=all", timeout=30) as r:
            assert {lesion, healthy} <= set(json.loads(r.read())["objects"])
        _check_guards(url, port, studies, lesion, healthy, tmp_path)

        out = infer(url, lesion, tmp_path / "pred.nii.gz")
        pred_img = nib.load(str(out))
        ref_img = nib.load(str(studies / f"{lesion}.nii.gz"))
        pred = np.asarray(pred_img.dataobj)
        assert pred.shape == ref_img.shape[:3]
        np.testing.assert_allclose(pred_img.affine, ref_img.affine, atol=1e-4)
        values = set(np.unique(pred).astype(int).tolist())
        assert values <= set(LABEL_NAMES), values

        seg = np.asarray(nib.load(str(studies / "labels" / "final" / f"{lesion}.nii.gz")).dataobj)
        wt_p, wt_t = pred > 0, seg > 0
        dice = 2.0 * (wt_p & wt_t).sum() / max(1, wt_p.sum() + wt_t.sum())
        assert 0.0 <= dice <= 1.0
        record_property("wt_dice_two_step_model", float(dice))
        record_property("predicted_labels", sorted(values))
        with capsys.disabled():
            print(f"\n[label] {lesion}: labels {sorted(values)}, WT Dice of the two-step model {dice:.4f} "
                  f"({int(wt_p.sum())} predicted vs {int(wt_t.sum())} reference tumour voxels)")
    finally:
        code = stop_label_server(proc)
    assert code in (0, -15), log.read_text()[-3000:]
    assert (studies / f"{lesion}.nii.gz").is_file()  # the server wrote into the copy only
