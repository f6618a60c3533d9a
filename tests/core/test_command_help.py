"""``--help`` of every command that does not train answers without importing torch, MONAI or face-alignment
(the heavy packages load at the point of use; ``bench/startup.py`` times the commands)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "monai", "face_alignment", "timm", "scipy")

PROBE = """
import contextlib, io, runpy, sys
module, args = sys.argv[1], sys.argv[2:]
sys.argv = [module, *args, "--help"]
out = io.StringIO()
try:
    with contextlib.redirect_stdout(out):
        runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
print(code, "usage:" in out.getvalue(), " ".join(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize("command", [
    ["mfassl"], ["mfassl", "export-encoder"],
    ["mfassl_medical"], ["mfassl_medical", "axis"], ["mfassl_medical", "axes"], ["mfassl_medical", "demo"],
    ["mfassl_faces"], ["mfassl_faces", "axis"], ["mfassl_faces", "landmarks"], ["mfassl_faces", "score"],
], ids=lambda c: " ".join(c))
def test_help_imports_no_heavy_package(command: list[str]) -> None:
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *command], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    code, has_usage, *heavy = done.stdout.split("\n")[-2].split(" ")
    assert code in ("0", "None") and has_usage == "True", done.stdout
    assert [m for m in heavy if m] == [], f"python -m {' '.join(command)} --help imports {heavy}"
