"""``mfassl_medical.label_app`` without a server: studies kept across restarts, the app files, strict options, ids.

These run in the project venv (no MONAI Label needed); ``test_label_server.py`` checks the same app on a real
server.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mfassl_medical import label_app
from mfassl_medical.label_app import (
    APP_NAME,
    BUNDLE_NAME,
    build_parser,
    label_server_env,
    loopback_origins,
    main,
    prepare_label_app,
    write_label_studies,
)
from mfassl_medical.label_server.ids import InvalidIdError, check_id, id_problem

CASES = ("BraTS2021_00000", "BraTS2021_00001")


@pytest.fixture
def brats(tmp_path: Path) -> Path:
    """A tiny BraTS 2021 folder: two cases of 6x5x4 voxels, seeded."""
    rng = np.random.default_rng(0)
    root = tmp_path / "brats"
    for case in CASES:
        (root / case).mkdir(parents=True)
        for mod in ("t1", "t1ce", "t2", "flair"):
            nib.save(nib.Nifti1Image(rng.random((6, 5, 4)).astype(np.float32), np.eye(4)),
                     str(root / case / f"{case}_{mod}.nii.gz"))
        seg = np.zeros((6, 5, 4), np.uint8)
        seg[1:3, 1:3, 1:3] = 2
        nib.save(nib.Nifti1Image(seg, np.eye(4)), str(root / case / f"{case}_seg.nii.gz"))
    return root


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _as_monai_label_would(studies: Path) -> dict[str, bytes]:
    """What a running server leaves in its studies: a corrected final label, a new label, an upload, its JSON."""
    user_seg = np.full((6, 5, 4), 4, np.uint8)
    nib.save(nib.Nifti1Image(user_seg, np.eye(4)), str(studies / "labels" / "final" / f"{CASES[0]}.nii.gz"))
    (studies / "labels" / "original").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(user_seg, np.eye(4)), str(studies / "labels" / "original" / f"{CASES[1]}.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((6, 5, 4, 4), np.float32), np.eye(4)), str(studies / "uploaded_7.nii.gz"))
    (studies / "datastore_v2.json").write_text('{"name": "x", "description": "", "objects": {}}')
    return {k: v for k, v in _tree(studies).items()
            if k in (f"labels/final/{CASES[0]}.nii.gz", f"labels/original/{CASES[1]}.nii.gz",
                     "uploaded_7.nii.gz", "datastore_v2.json")}


def test_write_label_studies_keeps_what_is_there_and_adds_what_is_missing(tmp_path, brats):
    studies = tmp_path / "studies"
    assert write_label_studies(studies, brats) == list(CASES)
    vol = nib.load(str(studies / f"{CASES[0]}.nii.gz"))
    assert vol.shape == (6, 5, 4, 4)
    np.testing.assert_allclose(np.asarray(vol.dataobj)[..., 0],
                               np.asarray(nib.load(str(brats / CASES[0] / f"{CASES[0]}_t1.nii.gz")).dataobj))
    user = _as_monai_label_would(studies)
    (studies / f"{CASES[1]}.nii.gz").unlink()  # one case image went missing: it is added again

    assert write_label_studies(studies, brats) == list(CASES)
    after = _tree(studies)
    assert {k: after[k] for k in user} == user  # the saved label, the new label, the upload and the JSON
    assert (studies / f"{CASES[1]}.nii.gz").is_file()
    assert int(np.asarray(nib.load(str(studies / "labels" / "final" / f"{CASES[0]}.nii.gz")).dataobj).max()) == 4
    assert not [p for p in studies.rglob("*.part*")]  # no temporary file left


class _Exec(Exception):
    """Raised by the fake ``os.execve``: the server would start here."""


def _fake_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv-label"
    (venv / "bin").mkdir(parents=True)
    for exe in ("python", "monailabel"):
        (venv / "bin" / exe).write_text("#!/bin/sh\n")
    return venv


_TINY_MODEL: dict[str, bytes] = {}


def _tiny_model(path: Path, wrap: bool = False) -> Path:
    """The state dict of the bundle's network with the tiny sizes (``serve``'s default ``--network``), saved."""
    import io

    import torch

    if "sd" not in _TINY_MODEL:
        net = label_app._bundle_network(label_app.default_bundle_dir(), label_app.TINY_NETWORK)
        buf = io.BytesIO()
        torch.save(net.state_dict(), buf)
        _TINY_MODEL["sd"] = buf.getvalue()
    path.write_bytes(_TINY_MODEL["sd"])
    if wrap:
        torch.save({"model": torch.load(path, weights_only=True), "epoch": 3}, path)
    return path


def test_serve_restart_keeps_saved_labels_and_uploads(tmp_path, brats, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls: list[tuple[list[str], dict[str, str]]] = []

    def fake_execve(path, argv, env):
        calls.append((list(argv), dict(env)))
        raise _Exec

    monkeypatch.setattr(label_app.os, "execve", fake_execve)
    model = _tiny_model(tmp_path / "model.pt")
    work = tmp_path / "work"
    argv = ["serve", "--workdir", str(work), "--label-venv", str(_fake_venv(tmp_path)), "--model", str(model),
            "--dataset-dir", str(brats), "--port", "8123"]
    with pytest.raises(_Exec):
        main(argv)
    studies = work / "studies"
    user = _as_monai_label_would(studies)
    with pytest.raises(_Exec):  # restarted with the same --workdir
        main(argv)
    after = _tree(studies)
    assert {k: after[k] for k in user} == user

    cmd, env = calls[-1]
    app = work / "apps" / APP_NAME
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8123"
    assert cmd[cmd.index("--uvicorn_app") + 1] == "mfassl_asgi:app"
    assert env["PYTHONPATH"] == str(app) and "MONAI_LABEL_CORS_ORIGINS" not in env
    assert {"main.py", "mfassl_asgi.py", "mfassl_ids.py", "mfassl_guards.py", "mfassl_labels.py"} <= {
        p.name for p in app.iterdir()}
    assert (app / "model" / BUNDLE_NAME / "models" / "model.pt").read_bytes() == model.read_bytes()
    assert env["MFASSL_LABEL_HOST"] == "127.0.0.1" and "MFASSL_LABEL_ALLOWED_HOSTS" not in env
    assert Path.cwd() == work / "home"


def test_prepare_label_app_backs_up_what_a_server_wrote(tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(b"v1")
    app = prepare_label_app(tmp_path / "w", model, network={"feature_size": 12})
    cfg = json.loads((app / "model" / BUNDLE_NAME / "configs" / "inference.json").read_text())
    assert cfg["feature_size"] == 12
    trained = app / "model" / BUNDLE_NAME / "models" / "model_trained_in_monailabel.pt"
    trained.write_bytes(b"trained")
    prepare_label_app(tmp_path / "w", model)
    backups = list((tmp_path / "w" / "model-backups").rglob("model_trained_in_monailabel.pt"))
    assert [b.read_bytes() for b in backups] == [b"trained"]
    assert not list((tmp_path / "w" / "model-backups").rglob("model.pt"))  # the unchanged model is not copied
    with pytest.raises(ValueError, match="unknown network key"):
        prepare_label_app(tmp_path / "w", model, network={"featuresize": 12})
    with pytest.raises(InvalidIdError, match="model name"):
        prepare_label_app(tmp_path / "w", model, name="../x")


@pytest.mark.parametrize("argv, option", [
    (["serve", "--port", "0"], "--port"),
    (["serve", "--port", "65536"], "--port"),
    (["serve", "--port", "80.5"], "--port"),
    (["serve", "--port", "http"], "--port"),
    (["serve", "--with-labels", "maybe"], "--with-labels"),
    (["serve", "--with-labels", ""], "--with-labels"),
    (["serve", "--train-steps", "0"], "--train-steps"),
    (["serve", "--train-epochs", "nan"], "--train-epochs"),
    (["serve", "--network", "{feature_size: 12}"], "--network"),
    (["serve", "--network", '{"feature": 12}'], "--network"),
    (["serve", "--cors-origin", "*"], "--cors-origin"),
    (["serve", "--cors-origin", "http://host:1/path"], "--cors-origin"),
    (["studies", "out", "--with-labels", "2"], "--with-labels"),
])
def test_options_are_parsed_strictly(argv, option, capsys):
    with pytest.raises(SystemExit) as err:
        build_parser().parse_args(argv)
    assert err.value.code == 2
    assert f"'{option}'" in capsys.readouterr().err


@pytest.mark.parametrize("text, value", [("true", True), ("FALSE", False), ("Yes", True), ("no", False),
                                         ("1", True), ("0", False)])
def test_boolean_options_accept_the_usual_words(text, value):
    assert build_parser().parse_args(["serve", "--with-labels", text]).with_labels is value
    args = build_parser().parse_args(["serve", "--port", "65535", "--cors-origin", "http://10.0.0.2:3000/"])
    assert args.port == 65535 and args.cors_origin == ["http://10.0.0.2:3000"]


def test_cors_origins_reach_the_server_environment(tmp_path):
    env = label_server_env(tmp_path / "home", base={"PYTHONPATH": "/project"}, app=tmp_path / "app",
                           cors_origins=["https://viewer.example:8443"])
    assert json.loads(env["MONAI_LABEL_CORS_ORIGINS"]) == ["https://viewer.example:8443"]
    assert env["PYTHONPATH"] == str((tmp_path / "app").absolute())
    assert "MONAI_LABEL_CORS_ORIGINS" not in label_server_env(tmp_path / "home", base={})
    assert loopback_origins(8000) == ["http://127.0.0.1:8000", "http://localhost:8000"]


@pytest.mark.parametrize("bad", ["../../x", "..", ".", "a/b", "a\\b", "/etc/passwd", "C:evil", "x\x00y", "a\nb",
                                 "", "x" * 256, "case..1", 7])
def test_bad_ids_are_refused_with_the_value(bad):
    assert id_problem(bad) is not None
    with pytest.raises(InvalidIdError, match="label tag"):
        check_id(bad, "label tag")


@pytest.mark.parametrize("good", ["BraTS2021_00000", "final", "case-1.v2", "uploaded 7", "ünïcode"])
def test_good_ids_pass(good):
    assert check_id(good) == good and id_problem(good) is None


def test_app_templates_name_the_checks(tmp_path):
    """The app files are written (the id rules byte for byte) with the folders MONAI Label expects."""
    app = label_app.write_app_files(tmp_path / "app")
    for name in ("main.py", "mfassl_asgi.py", "mfassl_ids.py", "mfassl_guards.py", "mfassl_labels.py"):
        compile((app / name).read_text(), str(app / name), "exec")  # valid Python for the server's interpreter
    assert (app / "mfassl_ids.py").read_bytes() == (Path(label_app.__file__).parent / "label_server" /
                                                    "ids.py").read_bytes()
    for sub in ("model", "lib", "logs", "bin"):
        assert (app / sub).is_dir()
    assert os.access(app / "main.py", os.R_OK)


LABEL_VENV = Path(os.environ.get("MFASSL_LABEL_VENV", Path(__file__).resolve().parents[2] / ".venv-label"))
LABEL_PY = LABEL_VENV / "bin" / "python"

_DATASTORE_SCRIPT = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from main import StudiesDatastore
from mfassl_ids import InvalidIdError
studies, upload = sys.argv[2], sys.argv[3]
ds = StudiesDatastore(studies, extensions=["*.nii.gz"])
out = {}
for name, call in [
    ("add ../../x", lambda: ds.add_image("../../x", upload, {})),
    ("add /abs", lambda: ds.add_image("/tmp/abs", upload, {})),
    ("add bad ext", lambda: ds.add_image("", upload.replace(".nii.gz", ".py"), {})),
    ("label tag ../..", lambda: ds.save_label("case", upload, "../../x", {})),
    ("label id ..", lambda: ds.save_label("..", upload, "final", {})),
    ("uri NUL", lambda: ds.get_image_uri("a\x00b")),
    ("remove a/b", lambda: ds.remove_image("a/b")),
]:
    try:
        call()
        out[name] = "accepted"
    except InvalidIdError as e:
        out[name] = "refused: " + str(e)
out["add ok"] = ds.add_image("new_case", upload, {})
out["label ok"] = ds.save_label("new_case", upload, "final", {})
print(json.dumps(out))
"""


@pytest.mark.label
@pytest.mark.skipif(not LABEL_PY.is_file(), reason=f"MONAI Label venv python not found at {LABEL_PY}")
def test_studies_datastore_refuses_ids_outside_the_studies(tmp_path):
    """The app's datastore itself (no server): traversal ids, tags and extensions are refused, nothing escapes."""
    import subprocess

    app = label_app.write_app_files(tmp_path / "app")
    studies = tmp_path / "box" / "studies"
    studies.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(studies / "case.nii.gz"))
    upload = tmp_path / "upload.nii.gz"
    upload.write_bytes((studies / "case.nii.gz").read_bytes())
    (tmp_path / "upload.py").write_bytes(b"print(1)")
    env = label_server_env(tmp_path / "home", app=app)
    run = subprocess.run([str(LABEL_PY), "-c", _DATASTORE_SCRIPT, str(app), str(studies), str(upload)], env=env,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    refused = {k: v for k, v in out.items() if k not in ("add ok", "label ok")}
    assert all(v.startswith("refused") for v in refused.values()), refused
    assert "'../../x'" in out["add ../../x"] and "extension '.py'" in out["add bad ext"]
    assert out["add ok"] == "new_case" and (studies / "new_case.nii.gz").is_file()
    assert (studies / "labels" / "final" / "new_case.nii.gz").is_file()
    assert sorted(p.name for p in (tmp_path / "box").iterdir()) == ["studies"]
    assert not (tmp_path / "x.nii.gz").exists() and not Path("/tmp/abs.nii.gz").exists()


# ------------------------------------------------------------------ serve refuses before it starts (issue 23)
def _serve_refuses(tmp_path, monkeypatch, capsys, extra: list[str]) -> str:
    """Run ``serve`` with ``extra``; it must stop with exit status 2 and one error line, the server never started."""
    started: list[list[str]] = []
    monkeypatch.setattr(label_app.os, "execve", lambda path, argv, env: started.append(list(argv)))
    code = main(["serve", "--workdir", str(tmp_path / "work"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and started == [], (code, err)
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_serve_refuses_a_missing_venv_or_model_with_one_line(tmp_path, monkeypatch, capsys):
    """Before: raw tracebacks."""
    err = _serve_refuses(tmp_path, monkeypatch, capsys, ["--label-venv", "/nonexistent"])
    assert "--label-venv /nonexistent does not exist" in err and "make label-venv" in err
    (tmp_path / "notavenv").mkdir()
    err = _serve_refuses(tmp_path, monkeypatch, capsys, ["--label-venv", str(tmp_path / "notavenv")])
    assert "is not a MONAI Label venv (no bin/monailabel)" in err
    venv = _fake_venv(tmp_path)
    err = _serve_refuses(tmp_path, monkeypatch, capsys, ["--label-venv", str(venv), "--model",
                                                         str(tmp_path / "missing.pt")])
    assert f"--model {tmp_path / 'missing.pt'}: file not found" in err


def test_serve_refuses_a_model_the_bundle_cannot_load(tmp_path, monkeypatch, capsys):
    """Before: the server started, then answered every infer with a bare 500."""
    import torch

    venv = _fake_venv(tmp_path)
    good = _tiny_model(tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    wrong = tmp_path / "wrong.pt"
    torch.save({"objective.backbone.cls_token": torch.zeros(1, 1, 8)}, wrong)  # another network's weights
    text = tmp_path / "notes.pt"
    text.write_text('{"model": "x"}')
    for model, says in ((truncated, "cannot be read as PyTorch weights"), (text, "cannot be read as PyTorch weights"),
                        (wrong, "not the mfassl_brats_segmentation network")):
        err = _serve_refuses(tmp_path, monkeypatch, capsys, ["--label-venv", str(venv), "--model", str(model)])
        assert f"--model {model}: {says}" in err, err
    err = _serve_refuses(tmp_path, monkeypatch, capsys, ["--label-venv", str(venv), "--model", str(good),
                                                         "--network", '{"feature_size": 24}'])
    assert "of another shape" in err and "--network sizes" in err
    assert label_app.check_model_file(_tiny_model(tmp_path / "wrapped.pt", wrap=True),
                                      label_app.TINY_NETWORK)["tensors"] > 50  # {"model": state dict} loads too


# ------------------------------------------------------------------ the server answers only its own host (issue 23)
def _asgi_call(guard, method: str, headers: dict[str, str]) -> tuple[int, bytes]:
    import asyncio

    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": "/infer/m", "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(guard(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_host_and_origin_guard():
    from mfassl_medical.label_server.guards import HostOriginGuard, allowed_hosts, hosts_from_env

    async def app(scope, receive, send):  # what the guard protects: answers 200
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ran"})

    hosts = allowed_hosts("127.0.0.1", ["lab-gpu.local"])
    guard = HostOriginGuard(app, hosts=hosts, origins=["http://127.0.0.1:8011", "http://localhost:8011"])
    cases = [  # (method, headers, status, body contains)
        ("GET", {"Host": "evil.example:8011"}, 400, b"Host 'evil.example:8011' is not this server"),
        ("POST", {"Host": "evil.example:8011"}, 400, b"evil.example"),
        ("GET", {}, 400, b"no Host header"),
        ("GET", {"Host": "127.0.0.1:8011"}, 200, b"ran"),
        ("GET", {"Host": "LOCALHOST:8011"}, 200, b"ran"),
        ("GET", {"Host": "[::1]:8011"}, 200, b"ran"),
        ("GET", {"Host": "lab-gpu.local:8011"}, 200, b"ran"),  # allowed with --allowed-host
        ("POST", {"Host": "127.0.0.1:8011", "Origin": "http://evil.example"}, 403,
         b"Origin 'http://evil.example' may not POST here"),
        ("PUT", {"Host": "127.0.0.1:8011", "Origin": "null"}, 403, b"may not PUT"),
        ("DELETE", {"Host": "127.0.0.1:8011", "Origin": "http://127.0.0.1:1"}, 403, b"may not DELETE"),
        ("POST", {"Host": "127.0.0.1:8011", "Origin": "http://localhost:8011"}, 200, b"ran"),
        ("POST", {"Host": "127.0.0.1:8011"}, 200, b"ran"),  # curl and scripts send no Origin
        ("GET", {"Host": "127.0.0.1:8011", "Origin": "http://evil.example"}, 200, b"ran"),  # CORS keeps the answer
    ]
    for method, headers, status, says in cases:
        got, body = _asgi_call(guard, method, headers)
        assert got == status and says in body, (method, headers, got, body)
    assert hosts_from_env({"MFASSL_LABEL_HOST": "0.0.0.0", "MFASSL_LABEL_ALLOWED_HOSTS": '["Lab-GPU"]'}) == [
        "127.0.0.1", "localhost", "::1", "lab-gpu"]  # a wildcard bind is no name a client uses


def test_allowed_hosts_option_reaches_the_server(tmp_path):
    env = label_server_env(tmp_path / "home", base={}, host="10.1.2.3", allowed_hosts=["Lab-GPU.local", "[fe80::1]"])
    assert env["MFASSL_LABEL_HOST"] == "10.1.2.3"
    assert json.loads(env["MFASSL_LABEL_ALLOWED_HOSTS"]) == ["lab-gpu.local", "fe80::1"]
    for bad in ("http://x", "x:8000", "*", "a/b"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", "--allowed-host", bad])


def test_label_problem_names_what_is_wrong(tmp_path):
    from mfassl_medical.label_server.labels import bundle_label_values, label_problem, label_value_sets

    assert bundle_label_values(str(label_app.default_bundle_dir())) == {0, 1, 2, 4}
    values = label_value_sets(bundle_label_values(str(label_app.default_bundle_dir())))
    assert values == [{0, 1, 2, 4}, {0, 1, 2, 3}]  # BraTS 2021, and 2023's numbering that the training reads
    image = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4, 4), np.float32), np.diag([1.0, 1.0, 2.0, 1.0])), str(image))
    seg = np.zeros((6, 5, 4), np.uint8)
    seg[1:3, 1:3, 1:3] = 2
    seg[2, 2, 2] = 4

    def label(name: str, arr, affine=np.diag([1.0, 1.0, 2.0, 1.0])) -> str:
        nib.save(nib.Nifti1Image(arr, affine), str(tmp_path / name))
        return str(tmp_path / name)

    assert label_problem(label("ok.nii.gz", seg), str(image), values) is None
    assert label_problem(label("ok4d.nii.gz", seg[..., None]), str(image), values) is None
    (tmp_path / "random.nii.gz").write_bytes(np.random.default_rng(0).bytes(3000))
    assert "is not a readable NIfTI label map" in label_problem(str(tmp_path / "random.nii.gz"), str(image), values)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes((tmp_path / "ok.nii.gz").read_bytes()[:60])
    assert "is not a readable NIfTI label map" in label_problem(str(cut), str(image), values)
    assert "has shape (5, 5, 5); its image's grid is (6, 5, 4)" in label_problem(
        label("grid.nii.gz", np.zeros((5, 5, 5), np.uint8)), str(image), values)
    assert "affine" in label_problem(label("aff.nii.gz", seg, np.eye(4)), str(image), values)
    bad = seg.copy()
    bad[0, 0, 0] = 7
    assert "holds the value(s) [7], not among the label values [0, 1, 2, 4] (or [0, 1, 2, 3])" in label_problem(
        label("seven.nii.gz", bad), str(image), values)
    mixed = seg.copy()
    mixed[0, 0, 0] = 3  # 3 (2023's ET) and 4 (2021's ET) in one map: neither numbering
    assert "holds the value(s) [3]" in label_problem(label("mixed.nii.gz", mixed), str(image), values)
    assert label_problem(label("brats2023.nii.gz", np.where(seg == 4, 3, seg).astype(np.uint8)), str(image),
                         values) is None
    frac = seg.astype(np.float32)
    frac[0, 0, 0] = 0.5
    assert "[0.5]; a label map holds whole label values" in label_problem(label("frac.nii.gz", frac), str(image),
                                                                        values)
    assert label_problem(label("any.nii.gz", bad), str(image), None) is None  # no label set: any whole value
