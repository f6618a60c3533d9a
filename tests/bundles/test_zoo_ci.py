"""The MONAI model zoo's CI checks, run the way the zoo runs them, on every bundle, offline, on CPU.

The zoo's ``ci/verify_bundle.py`` (called by ``ci/run_premerge_cpu.sh`` / ``run_premerge_gpu.sh``) puts the bundle
folder first on ``sys.path`` and then, in one Python process: checks the file layout (``configs/metadata.json``,
``LICENSE``, ``models/model.pt``, ``configs/inference.*``), the version and changelog, ``verify_metadata`` against
the official schema (offline copy), ``verify_net_in_out("network_def", config_file="configs/inference.json")`` with a random input of the
metadata's input shape, and ``ckpt_export("network_def", ...)`` by scripting (the default) from fake weights of
the network. ``DRIVER`` below does the same steps in a child interpreter (sockets refused), with tiny network
sizes given as the command-line strings a user types, and also checks that the exported module reproduces the
network and carries the bundle's metadata. The zoo's pre-commit JSON hygiene (``pretty-format-json --indent=4
--no-sort-keys``, ``end-of-file-fixer``, ``trailing-whitespace``, ``mixed-line-ending``) is checked on every JSON
file in ``bundles/``. The weights check fails until trained weights are published (xfail, strict).
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bundle_utils import BUNDLES

SCHEMA = BUNDLES / "schemas" / "monai_bundle_metadata.json"  # the metadata requirements, checked offline
NAMES = ["mfassl_brats_pretrain", "mfassl_brats_segmentation", "mfassl_chexpert_pretrain"]

# override strings as typed on the command line (``--network_def#embed_dim 48``): parsed like MONAI's fire CLI
TINY_CLI = {
    "mfassl_brats_pretrain": {"network_def#embed_dim": "48", "network_def#depth": "2", "network_def#num_heads": "4",
                              "network_def#mfa_layer": "1", "_meta_#network_data_format#outputs#pred#num_channels": "48"},
    "mfassl_chexpert_pretrain": {"network_def#embed_dim": "48", "network_def#depth": "2",
                                 "network_def#num_heads": "4", "network_def#mfa_layer": "1",
                                 "_meta_#network_data_format#outputs#pred#num_channels": "48"},
    "mfassl_brats_segmentation": {"feature_size": "12", "depths": "[1,1,1,1]", "num_heads": "[1,2,3,4]",
                                  "window_size": "4"},
}

DRIVER = textwrap.dedent('''
    import json, os, socket, sys, warnings
    import fire  # MONAI's command line parses override strings with fire; so does this driver

    def _refuse(*args, **kwargs):
        raise OSError("network access attempted during an offline zoo check")
    socket.socket.connect = _refuse
    socket.create_connection = _refuse
    socket.getaddrinfo = _refuse

    schema, out, jobs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    warnings.simplefilter("error", DeprecationWarning)
    warnings.filterwarnings("error", message="Detected deprecated name")  # MONAI's optional_packages_version rename
    import torch
    from monai.bundle import ConfigParser, ckpt_export, verify_metadata, verify_net_in_out
    from fire.parser import DefaultParseValue

    reports = {}
    for name, (bundle, raw) in jobs.items():
        sys.path = [bundle] + sys.path  # as ci/verify_bundle.py: bundle-local code (scripts/) is importable
        override = {k: DefaultParseValue(v) for k, v in raw.items()}
        meta, config = os.path.join(bundle, "configs", "metadata.json"), os.path.join(bundle, "configs", "inference.json")
        report = {}
        for rel in ("configs/metadata.json", "LICENSE", "configs/inference.json"):
            assert os.path.isfile(os.path.join(bundle, rel)), rel
        m = json.load(open(meta))
        assert m["version"] in m["changelog"], "version not in changelog"
        verify_metadata(meta_file=meta, filepath=schema)
        verify_net_in_out(net_id="network_def", meta_file=meta, config_file=config, bundle_root=bundle, device="cpu",
                          **override)
        # _produce_fake_weights, then verify_torchscript (ckpt_export by scripting)
        parser = ConfigParser()
        parser.read_config(f=config)
        parser.read_meta(f=meta)
        parser.update({"bundle_root": bundle, **override})
        torch.manual_seed(0)
        net = parser.get_parsed_content("network_def").eval()
        ckpt, ts = os.path.join(out, name + "_model.pt"), os.path.join(out, name + "_verify_model.ts")
        torch.save(net.state_dict(), ckpt)
        ckpt_export(net_id="network_def", filepath=ts, ckpt_file=ckpt, meta_file=meta, config_file=config,
                    bundle_root=bundle, **override)
        extra = {"metadata.json": "", "inference.json": ""}
        exported = torch.jit.load(ts, _extra_files=extra)
        shape = parser.get("_meta_#network_data_format#inputs#image#spatial_shape")
        from monai.bundle.scripts import _get_fake_spatial_shape
        channels = parser.get("_meta_#network_data_format#inputs#image#num_channels")
        x = torch.rand(1, channels, *_get_fake_spatial_shape(shape), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            y = exported(x)
            report["max_abs_diff"] = float((y - net(x)).abs().max())
            report["out_shape"] = list(y.shape)
        report["exported_meta"] = json.loads(extra["metadata.json"])
        report["parsed_packages"] = parser.get("_meta_#required_packages_version")
        reports[name] = report
    print("ZOO-REPORT " + json.dumps(reports))
''')


@pytest.fixture(scope="module")
def zoo_reports(tmp_path_factory) -> dict:
    """One child interpreter runs the zoo's steps on the three bundles (one import of torch and MONAI)."""
    tmp = tmp_path_factory.mktemp("zoo")
    driver = tmp / "verify_bundle_driver.py"
    driver.write_text(DRIVER)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    jobs = {name: [str(BUNDLES / name), TINY_CLI[name]] for name in NAMES}
    proc = subprocess.run([sys.executable, str(driver), str(SCHEMA), str(tmp), json.dumps(jobs)],
                          capture_output=True, text=True, timeout=600, cwd=tmp, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "Detected deprecated name" not in proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("ZOO-REPORT "))
    return json.loads(line[len("ZOO-REPORT "):])


@pytest.mark.parametrize("name", NAMES)
def test_zoo_verify_bundle_checks(name, zoo_reports):
    report = zoo_reports[name]
    # the scripted module reproduces the network
    assert report["max_abs_diff"] < 1e-5, report["max_abs_diff"]
    meta = json.loads((BUNDLES / name / "configs" / "metadata.json").read_text())
    out = next(iter(meta["network_data_format"]["outputs"].values()))
    assert report["out_shape"][:2] == [1, 48 if "pretrain" in name else out["num_channels"]]
    if name == "mfassl_brats_segmentation":
        assert report["out_shape"][2:] == [64, 64, 64]  # "32*n+32" at n = 1
    # the metadata inside model.ts and the parsed _meta_ list every package under the current key
    for packages in (report["exported_meta"]["required_packages_version"], report["parsed_packages"]):
        assert packages == meta["required_packages_version"]
    assert "optional_packages_version" not in report["exported_meta"]


def test_segmentation_shape_rule_holds_at_n_1(tmp_path):
    """Old rule ``32*n`` gave a 32^3 input at n = 1 (one voxel at the bottleneck); ``32*n+32`` starts at 64."""
    from monai.bundle.scripts import _get_fake_spatial_shape

    meta = json.loads((BUNDLES / "mfassl_brats_segmentation" / "configs" / "metadata.json").read_text())
    shape = meta["network_data_format"]["inputs"]["image"]["spatial_shape"]
    assert [_get_fake_spatial_shape(shape, n=n) for n in (1, 2)] == [(64, 64, 64), (96, 96, 96)]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert (pred["num_channels"], pred["dtype"]) == (3, "float32")  # the network's output, not the label map


@pytest.mark.xfail(strict=True, reason="no weights trained on real data are published yet: models/model.pt or a "
                                       "large_files.yml entry (see docs/large_files.yml.template of each bundle)")
@pytest.mark.parametrize("name", NAMES)
def test_zoo_published_weights(name):
    """The zoo's check for weights, on what a submission holds: a committed models/model.pt or large_files.yml.

    A models/model.pt that a local run wrote (``make demo`` writes the demo encoder there; it is git-ignored)
    is not published weights, so it does not count.
    """
    root = BUNDLES / name
    large = [p for p in root.glob("large_files.*") if p.suffix in (".yml", ".yaml", ".json")]
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "models/model.pt"], cwd=root,
                             capture_output=True).returncode == 0
    assert tracked or large, f"{name}: models/model.pt or large_files.yml"


@pytest.mark.parametrize("name", NAMES)
def test_weights_publishing_template(name):
    """The template is valid YAML in the zoo's large_files layout and is not named what the check picks up."""
    import yaml

    template = BUNDLES / name / "docs" / "large_files.yml.template"
    data = yaml.safe_load(template.read_text())
    (entry,) = data["large_files"]
    assert entry["path"] == "models/model.pt" and entry["url"].startswith("https://")
    assert {"hash_val", "hash_type"} <= set(entry)
    assert not list((BUNDLES / name).glob("large_files.*"))
    assert "large_files.yml.template" in (BUNDLES / name / "docs" / "README.md").read_text()


def _pre_commit_problems(path: Path) -> list[str]:
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    problems = []
    pretty = json.dumps(json.loads(text, object_pairs_hook=collections.OrderedDict), indent=4, ensure_ascii=True)
    if text != pretty + "\n":
        problems.append("pretty-format-json --indent=4 --no-sort-keys")
    if not text.endswith("\n") or text.endswith("\n\n"):
        problems.append("end-of-file-fixer")
    if any(line != line.rstrip() for line in text.split("\n")):
        problems.append("trailing-whitespace")
    if b"\r" in raw:
        problems.append("mixed-line-ending")
    return problems


# what the hooks see: the shipped files, not what runs write into the (git-ignored) output folders
GENERATED = {"models", "eval", "predictions", "runs", "logs", "inference"}
JSON_FILES = sorted(p for p in BUNDLES.rglob("*.json") if not GENERATED & set(p.relative_to(BUNDLES).parts[1:-1]))


@pytest.mark.parametrize("path", JSON_FILES, ids=[str(p.relative_to(BUNDLES)) for p in JSON_FILES])
def test_json_passes_the_zoo_pre_commit_hooks(path):
    assert _pre_commit_problems(path) == [], path


def test_the_hygiene_check_catches_what_the_hooks_fix(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"b": 1, "a": [1, 2]}')
    assert _pre_commit_problems(bad) == ["pretty-format-json --indent=4 --no-sort-keys", "end-of-file-fixer"]
    bad.write_text(json.dumps({"b": 1, "a": "\u00e9"}, indent=4, ensure_ascii=False) + "\n")
    assert _pre_commit_problems(bad) == ["pretty-format-json --indent=4 --no-sort-keys"]
    good = tmp_path / "y.json"
    good.write_text(json.dumps({"b": 1, "a": [1, 2]}, indent=4) + "\n")
    assert _pre_commit_problems(good) == []


@pytest.mark.parametrize("name", ["mfassl_brats_pretrain", "mfassl_chexpert_pretrain"])
def test_standalone_inference_matches_training(name):
    """inference.json stands alone (the zoo reads it without train.json) and defines the same network and the same
    preprocessing chain: its two transform lists are train.json's, word for word (evaluate.json, merged on
    train.json, references them instead of copying)."""
    d = BUNDLES / name / "configs"
    train, inf = json.loads((d / "train.json").read_text()), json.loads((d / "inference.json").read_text())
    assert inf["network_def"] == train["network_def"]
    for key in ("canonical_transforms", "input_transforms"):
        assert inf[key] == train[key], key
    assert train["train"]["preprocessing"]["transforms"] == "$@canonical_transforms + @input_transforms"
    assert inf["preprocessing"]["transforms"].startswith("$@canonical_transforms + @input_transforms")
    evaluate = json.loads((d / "evaluate.json").read_text())
    assert evaluate["eval"]["preprocessing"]["transforms"].startswith("$@canonical_transforms + ")
    assert "SafeLoadImaged" not in json.dumps(evaluate)  # no copy of the chain
    for key, value in inf.items():
        if key in train and not isinstance(value, (dict, list)) and key not in ("output_dir",):
            assert value == train[key], key
    refs = {r for r in json.dumps(inf).replace("'", '"').split("@")[1:]}
    assert not any(r.startswith("train#") for r in refs)


def _docstring_first_problems(source: bytes) -> list[str]:
    """The zoo's ``check-docstring-first`` hook: at most one module-level string, before any code."""
    import io
    import tokenize

    non_code = {tokenize.COMMENT, tokenize.ENDMARKER, tokenize.NEWLINE, tokenize.NL, tokenize.ENCODING}
    docstring_line = code_line = None
    problems = []
    for tok, _, (line, col), _, _ in tokenize.tokenize(io.BytesIO(source).readline):
        if tok == tokenize.STRING and col == 0:
            if docstring_line is not None:
                problems.append(f"line {line}: multiple module docstrings (first on line {docstring_line})")
            elif code_line is not None:
                problems.append(f"line {line}: module docstring after code (line {code_line})")
            else:
                docstring_line = line
        elif tok not in non_code and code_line is None:
            code_line = line
    return problems


PY_FILES = sorted(BUNDLES.rglob("*.py"))


@pytest.mark.parametrize("path", PY_FILES, ids=[str(p.relative_to(BUNDLES)) for p in PY_FILES])
def test_python_passes_the_zoo_docstring_first_hook(path):
    assert _docstring_first_problems(path.read_bytes()) == [], path


def test_the_docstring_first_check_catches_an_attribute_docstring():
    bad = b'"""Module."""\nX = 1\n"""About X."""\n'
    assert _docstring_first_problems(bad) == ["line 3: multiple module docstrings (first on line 1)"]
    assert _docstring_first_problems(b'import os\n"""Late."""\n') == ["line 2: module docstring after code (line 1)"]
    assert _docstring_first_problems(b'"""Module."""\n\nX = 1  # a comment\n') == []
