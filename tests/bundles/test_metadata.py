"""Every bundle's metadata.json is valid against MONAI's bundle-metadata requirements (offline) and the project's
stricter rules; model-zoo layout.

The ``"schema"`` of each metadata file is the official schema's URL, the one the model zoo's bundles name and its
CI downloads. ``monai.bundle.verify_metadata`` downloads that URL to ``filepath`` only when the file does not
exist; with ``filepath=bundles/schemas/monai_bundle_metadata.json`` (the project's offline statement of the bundle
specification's metadata requirements) it reads the local file. The
tests below make any socket connection or download fail, so a passing run proves that nothing was fetched. The
project's stricter rules (x.y.z versions, every tensor field, known dtypes, encoder outputs) are a test-side
JSON schema, ``tests/bundles/data/mfassl_strict_metadata_schema.json``, not a bundle's schema.
"""

from __future__ import annotations

import importlib.metadata
import json
import socket
import sys
from pathlib import Path

import pytest

from bundle_utils import BUNDLES, ROOT, refuse_network
from cli_runner import run_monai_bundle

OFFICIAL_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
SCHEMA = BUNDLES / "schemas" / "monai_bundle_metadata.json"  # what OFFICIAL_URL requires, for offline checks
STRICT = Path(__file__).parent / "data" / "mfassl_strict_metadata_schema.json"
NAMES = sorted(p.name for p in BUNDLES.glob("mfassl_*") if p.is_dir())
PRETRAIN = ["mfassl_brats_pretrain", "mfassl_chexpert_pretrain"]

def _meta(name: str) -> dict:
    return json.loads((BUNDLES / name / "configs" / "metadata.json").read_text())


def _verify(meta_file: Path) -> None:
    """verify_metadata against the offline schema (an existing file is never downloaded)."""
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(meta_file), filepath=str(SCHEMA))


def _strict(meta: dict) -> None:
    """The project's stricter rules: jsonschema's ValidationError on the first broken one."""
    import jsonschema

    jsonschema.validate(meta, json.loads(STRICT.read_text()), cls=jsonschema.Draft7Validator)


@pytest.fixture
def offline(monkeypatch):
    """Any socket connection, name look-up or download of a file that is not already there fails the test."""
    import monai.apps.utils as apps_utils
    import monai.bundle.scripts as scripts

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"network access attempted: {args} {kwargs}")

    real = apps_utils.download_url

    def only_existing(url, filepath="", *args, **kwargs):
        if not filepath or not Path(filepath).is_file():
            refuse(url, filepath)
        return real(url, filepath, *args, **kwargs)

    monkeypatch.setattr(scripts, "download_url", only_existing)
    monkeypatch.setattr(apps_utils, "urlopen", refuse)
    monkeypatch.setattr(apps_utils, "urlretrieve", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert not attempts, f"network access attempted: {attempts}"


def test_bundles_found():
    assert set(PRETRAIN) <= set(NAMES) and "mfassl_brats_segmentation" in NAMES


def test_offline_schema_states_the_specification_requirements():
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["required"] == ["schema", *_REQUIRED]  # the keys the bundle specification requires of every bundle
    assert set(schema["definitions"]["tensor"]["required"]) >= {"type", "format", "num_channels", "dtype",
                                                                 "is_patch_data"}
    assert "mfassl" not in SCHEMA.read_text().lower()  # nothing project-specific in it: those rules are STRICT's
    strict = json.loads(STRICT.read_text())
    jsonschema.Draft7Validator.check_schema(strict)
    tensor = strict["definitions"]["tensor"]["properties"]
    assert "embedding" in tensor["type"]["enum"] and "features" in tensor["format"]["enum"]


@pytest.mark.parametrize("name", NAMES)
def test_metadata_names_the_official_schema(name):
    assert _meta(name)["schema"] == OFFICIAL_URL


@pytest.mark.parametrize("name", NAMES)
def test_metadata_is_valid_offline(name, offline):
    _verify(BUNDLES / name / "configs" / "metadata.json")
    _strict(_meta(name))


@pytest.mark.parametrize("name", NAMES)
def test_metadata_fits_the_venv(name):
    import monai
    import numpy
    import torch

    m = _meta(name)
    assert m["version"] in m["changelog"]
    assert m["monai_version"] == monai.__version__
    assert m["pytorch_version"] == torch.__version__.split("+")[0]
    # numpy and the listed packages are not pinned by the install: a fresh install may resolve newer
    # releases, so the test asks for the same major version rather than the same release
    assert m["numpy_version"].split(".")[0] == numpy.__version__.split(".")[0]
    assert "mfassl" in m["required_packages_version"]
    packages = {**m["required_packages_version"], **m.get("optional_packages_version", {})}
    for dist, version in packages.items():
        installed = importlib.metadata.version(dist)  # raises when a listed package is not installed
        assert installed.split(".")[0] == version.split(".")[0], f"{name}: {dist} {installed} vs {version}"


def test_pretrain_bundles_output_embeddings():
    for name in PRETRAIN:
        (out,) = _meta(name)["network_data_format"]["outputs"].values()
        assert (out["type"], out["format"]) == ("embedding", "features")


def test_verify_metadata_command_line_offline(monkeypatch):
    """``python -m monai.bundle verify_metadata`` against the offline schema, every socket refused."""
    refuse_network(monkeypatch)
    with pytest.raises(OSError, match="offline test"):  # the guard is active
        socket.create_connection(("127.0.0.1", 9))
    meta = BUNDLES / PRETRAIN[0] / "configs" / "metadata.json"
    proc = run_monai_bundle("verify_metadata", "--meta_file", str(meta), "--filepath", str(SCHEMA), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipped downloading" in proc.stdout and "verified with no error" in proc.stdout


def _pop(*path):
    def mutate(m):
        for key in path[:-1]:
            m = m[key]
        m.pop(path[-1])
    return mutate


def _set(value, *path):
    def mutate(m):
        for key in path[:-1]:
            m = m[key]
        m[path[-1]] = value
    return mutate


_REQUIRED = ["version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version", "task",
             "description", "authors", "copyright", "network_data_format"]
_IMAGE = ("network_data_format", "inputs", "image")
_PRED = ("network_data_format", "outputs", "pred")

# what the bundle specification refuses (and so do the project's rules)
OFFICIAL_BREAKS = [
    *[pytest.param(_pop(key), id=f"missing-{key}") for key in _REQUIRED],
    pytest.param(_pop("network_data_format", "outputs"), id="missing-outputs"),
    pytest.param(_pop(*_IMAGE, "dtype"), id="missing-input-dtype"),
    pytest.param(_set(3, "version"), id="version-not-a-string"),
    pytest.param(_set(["mfassl"], "required_packages_version"), id="packages-not-a-mapping"),
    pytest.param(_set("four", *_IMAGE, "num_channels"), id="num_channels-not-an-integer"),
    pytest.param(_set("yes", *_IMAGE, "is_patch_data"), id="is_patch_data-not-a-boolean"),
]
# what only the project's stricter rules refuse
STRICT_BREAKS = [
    pytest.param(_pop("changelog"), id="missing-changelog"),
    pytest.param(_set("v1", "version"), id="version-not-x.y.z"),
    pytest.param(_set("float", *_PRED, "dtype"), id="unknown-dtype"),
    pytest.param(_set("labels", *_PRED, "format"), id="embedding-with-label-format"),
    pytest.param(_pop(*_PRED, "channel_def"), id="missing-output-channel_def"),
    pytest.param(_set("bundles/schemas/meta_schema.json", "schema"), id="schema-not-the-official-url"),
]


@pytest.mark.parametrize("mutate", OFFICIAL_BREAKS)
def test_invalid_metadata_is_rejected_by_the_specification_schema(tmp_path, offline, mutate):
    import jsonschema

    m = _meta(PRETRAIN[0])
    mutate(m)
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(m))
    # verify_metadata turns jsonschema's ValidationError into a ValueError (the ValidationError is its cause)
    with pytest.raises(ValueError, match="Failed validating") as err:
        _verify(bad)
    assert isinstance(err.value.__cause__, jsonschema.ValidationError)
    with pytest.raises(jsonschema.ValidationError):
        _strict(m)


@pytest.mark.parametrize("mutate", STRICT_BREAKS)
def test_the_projects_rules_are_stricter_than_the_schema(tmp_path, offline, mutate):
    import jsonschema

    m = _meta(PRETRAIN[0])
    mutate(m)
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(m))
    _verify(bad)  # the official schema lets it through
    with pytest.raises(jsonschema.ValidationError):
        _strict(m)


def test_metadata_without_schema_field_is_rejected(tmp_path, offline):
    m = _meta(PRETRAIN[0])
    m.pop("schema")
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(m))
    with pytest.raises(ValueError, match="schema"):
        _verify(bad)


@pytest.mark.parametrize("name", NAMES)
def test_model_zoo_layout(name):
    root = BUNDLES / name
    for rel in ("LICENSE", "docs/README.md", "docs/data_license.txt", "configs/metadata.json", "configs/train.json",
                "configs/logging.conf", "configs/inference.json", "configs/evaluate.json", "configs/multi_gpu_train.json"):
        assert (root / rel).is_file(), f"{name}: {rel} missing"
    if name == "mfassl_brats_segmentation":
        assert (root / "configs" / "multi_gpu_evaluate.json").is_file()
    # the data terms name the real data set and say what the demo data is
    terms = (root / "docs" / "data_license.txt").read_text()
    assert ("CheXpert" if "chexpert" in name else "BraTS") in terms and "demo data" in terms
    assert (root / "models").is_dir(), f"{name}: models/ missing"


@pytest.mark.parametrize("name", PRETRAIN)
def test_pretrain_bundle_layout(name):
    configs = BUNDLES / name / "configs"
    for rel in ("evaluate.json", "inference.json", "multi_gpu_train.json"):
        assert (configs / rel).is_file(), f"{name}: configs/{rel} missing"


@pytest.mark.parametrize("name", NAMES)
def test_parsed_meta_keeps_every_package_without_a_deprecation(name):
    """MONAI 1.6.1 renames optional_packages_version to required_packages_version on read, replacing the list:
    before, the parsed _meta_ held only the optional packages ({einops, tqdm}) and every run warned."""
    import warnings

    from monai.bundle import ConfigParser

    m = _meta(name)
    assert "optional_packages_version" not in m
    parser = ConfigParser()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parser.read_meta(str(BUNDLES / name / "configs" / "metadata.json"))
    assert parser.get("_meta_#required_packages_version") == m["required_packages_version"]


def _imported_distributions(name: str) -> set[str]:
    """Distributions of the third-party modules the bundle's configs import, directly or through mfassl."""
    import ast
    import importlib.util
    import re

    found: set[str] = set()
    todo: list[str] = []
    for f in (BUNDLES / name / "configs").glob("*.json"):
        text = f.read_text()
        todo += [a or b for a, b in re.findall(r"\$\s*import\s+([\w.]+)|\$\s*from\s+([\w.]+)\s+import", text)]
        todo += [t.rsplit(".", 1)[0] for t in re.findall(r'"_target_":\s*"([\w.]+)"', text) if "." in t]
    seen: set[str] = set()
    while todo:
        mod = todo.pop()
        if not mod or mod in seen:
            continue
        seen.add(mod)
        top = mod.split(".")[0]
        if top not in ("mfassl", "mfassl_medical"):
            if top not in sys.stdlib_module_names and top != "scripts":
                found.add(top)
            continue
        try:
            spec = importlib.util.find_spec(mod)
        except (ImportError, AttributeError, ValueError):
            spec = None
        if spec is None or not (spec.origin or "").endswith(".py"):
            continue
        parts = mod.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        for node in ast.walk(ast.parse(Path(spec.origin).read_text())):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                todo += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    dists = importlib.metadata.packages_distributions()
    return {d.lower() for t in found for d in dists.get(t, [t])} - {"torch", "monai", "numpy"}


@pytest.mark.parametrize("name", NAMES)
def test_metadata_lists_every_imported_package(name):
    listed = {k.lower() for k in _meta(name)["required_packages_version"]}
    missing = _imported_distributions(name) - listed
    assert not missing, f"{name}: imported but not in required_packages_version: {sorted(missing)}"
