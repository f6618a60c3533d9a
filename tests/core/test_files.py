"""mfassl.files: the one atomic write (mode from the umask, nothing left on failure, ``no space left on``) and the
output guard (never an input, never a foreign file without ``--overwrite``), and the JSON-lines recogniser."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest
import torch

from mfassl.files import (
    ForeignOutputError,
    NoSpaceError,
    OutputGuard,
    OutputIsInputError,
    atomic_write,
    json_lines_recogniser,
    read_json_lines,
    repair_json_lines,
    write_bytes,
    write_json,
    write_text,
)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture()
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_new_files_get_the_umask_mode_and_replaced_files_keep_theirs(tmp_path, umask_027):
    plain = tmp_path / "plain.txt"
    with open(plain, "w") as fh:  # what a plain open() gives under this umask
        fh.write("x")
    text = write_text(tmp_path / "a" / "model.json", '{"a": 1}\n')
    weights = atomic_write(tmp_path / "a" / "model.pt", lambda f: torch.save({"w": torch.ones(2)}, f))
    assert _mode(text) == _mode(weights) == _mode(plain) == 0o640
    os.chmod(text, 0o600)  # the user made it private: a rewrite keeps that, as open() would
    write_json(text, {"a": 2})
    assert _mode(text) == 0o600 and json.loads(text.read_text()) == {"a": 2}
    assert torch.load(weights, weights_only=True)["w"].tolist() == [1.0, 1.0]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["model.json", "model.pt"]


def test_a_link_is_followed_like_open_would(tmp_path):
    target = write_text(tmp_path / "real.txt", "old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


def test_a_failing_writer_leaves_the_earlier_file_and_no_temporary(tmp_path):
    path = write_bytes(tmp_path / "x.bin", b"good")
    with pytest.raises(ValueError, match="boom"):
        atomic_write(path, lambda f: (f.write(b"partial"), (_ for _ in ()).throw(ValueError("boom"))))
    assert path.read_bytes() == b"good" and os.listdir(tmp_path) == ["x.bin"]


class _FullDisk:
    """A binary file whose disk fills after ``room`` bytes (``write`` raises ENOSPC, as the system does)."""

    def __init__(self, fh, room: int, code: int = errno.ENOSPC) -> None:
        self.fh, self.room, self.code = fh, room, code

    def write(self, data) -> int:
        n = len(memoryview(data))
        if n > self.room:
            self.fh.write(bytes(memoryview(data)[: self.room]))
            self.room = 0
            raise OSError(self.code, os.strerror(self.code))
        self.room -= n
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "free on its file system"), (errno.EDQUOT, "quota")])
def test_a_full_disk_says_no_space_left_on_the_file_and_keeps_the_earlier_one(tmp_path, code, words):
    path = atomic_write(tmp_path / "ckpt.pt", lambda f: torch.save({"w": torch.zeros(4)}, f))
    good = path.read_bytes()
    with pytest.raises(NoSpaceError) as info:  # torch wraps the OSError into "unexpected pos ..."
        atomic_write(path, lambda f: torch.save({"w": torch.ones(10_000)}, _FullDisk(f, 1000, code)))
    message = str(info.value)
    assert message.startswith(f"no space left on {path}") and words in message
    assert "earlier ckpt.pt is left as it was" in message and "unexpected pos" not in message
    assert info.value.errno == code and isinstance(info.value, OSError)
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["ckpt.pt"]


def test_the_guard_refuses_inputs_by_path_link_inode_and_sidecar(tmp_path):
    model = write_bytes(tmp_path / "m2.pt", b"weights")
    (tmp_path / "alias.pt").symlink_to(model)
    os.link(model, tmp_path / "hard.pt")
    guard = OutputGuard([model, model.with_suffix(".json")], overwrite=True)
    for out in (model, tmp_path / "alias.pt", tmp_path / "hard.pt", tmp_path / "sub" / ".." / "m2.pt",
                tmp_path / "m2.json"):  # the sidecar is an input even while it does not exist
        with pytest.raises(OutputIsInputError, match="is an input of this command.*not even with --overwrite"):
            guard.check(out, "--out")
    assert guard.check(tmp_path / "new.pt", "--out") == "new"
    with pytest.raises(OutputIsInputError, match="would be the same file as"):
        guard.check(tmp_path / "sub" / ".." / "new.pt", "--out")  # two outputs of one run are never one file
    assert model.read_bytes() == b"weights"


def test_the_guard_replaces_only_its_own_files_unless_overwrite(tmp_path):
    own = write_text(tmp_path / "own.txt", "OURS")
    foreign = write_text(tmp_path / "notes.txt", "the user's notes")
    recognise = lambda p: None if p.read_text() == "OURS" else "not ours"  # noqa: E731
    assert OutputGuard().check(own, "--out", recognise=recognise) == "own"
    with pytest.raises(ForeignOutputError, match=r"--out .*notes\.txt already exists and is not a report \(not ours\)"
                                                 r".*Pass --overwrite"):
        OutputGuard().check(foreign, "--out", recognise=recognise, kind="a report")
    assert OutputGuard(overwrite=True).check(foreign, "--out", recognise=recognise) == "overwrite"
    with pytest.raises(ForeignOutputError, match="is a folder, not a file"):
        OutputGuard(overwrite=True).check(tmp_path, "--out")
    assert foreign.read_text() == "the user's notes"


AXES = json_lines_recogniser(lambda r: "key" in r and "kind" in r, "an axes record")


@pytest.mark.parametrize("text, reason", [
    ("", None),
    ('{"key": "a", "kind": "x"}\n{"key": "b", "kind": "x"}\n', None),
    ('{"key": "a", "kind": "x"}\n{"key": "b", "ki', None),  # a line cut short by a killed run
    ('{"key": "a", "kind": "x"}\n{not json\n{"key": "b", "kind": "x"}\n', None),  # an old cut line in the middle
    ('{\n  "experiment": "mine"\n}', "line 2 is not a JSON object"),  # a pretty-printed JSON document
    ('{"experiment": "mine"}', "line 1 is not an axes record"),  # one JSON object without a newline
    ("Path,Sex,Age\nx.jpg,F,50\n", "line 1 is not a JSON object"),
    ('{"key": "a", "kind": "x"}\nsecond line, no newline', "line 2 is not a JSON object"),
    ('{"key": "a", "kind": "x"}\n{"other": 1}\n', "line 2 is not an axes record"),
])
def test_json_lines_recogniser(tmp_path, text, reason):
    path = tmp_path / "f.jsonl"
    path.write_text(text)
    assert AXES(path) == reason


def test_a_jpeg_is_not_json_lines(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\n\x01\x02")
    assert AXES(path) == "line 1 is not a JSON object"


def test_repair_drops_only_the_cut_last_line(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"key": "a"}\n{"key": "b", "ki')
    assert repair_json_lines(path) == len('{"key": "b", "ki')
    assert path.read_text() == '{"key": "a"}\n' and repair_json_lines(path) == 0
    path.write_text('{"key": "c", "kind"')  # the first line of a first run, cut
    repair_json_lines(path)
    assert path.read_text() == ""


def test_the_recogniser_says_what_a_foreign_record_is(tmp_path):
    axes = json_lines_recogniser(
        lambda r: r.get("kind") == "chexpert", "an axes record of --kind chexpert",
        describe=lambda r: f"holds an axes record of --kind {r['kind']}" if "kind" in r else None)
    path = tmp_path / "f.jsonl"
    path.write_text('{"key": "BraTS2021_00000", "kind": "brats"}\n')
    assert axes(path) == "line 1 holds an axes record of --kind brats"
    path.write_text('{"other": 1}\n')
    assert axes(path) == "line 1 is not an axes record of --kind chexpert"


def test_read_json_lines_skips_blank_lines_and_hands_bad_ones_to_the_caller(tmp_path, caplog):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n[2, 3]\n{"cut": \n"text"\n')
    with caplog.at_level("WARNING", logger="mfassl.files"):
        assert list(read_json_lines(path)) == [(1, {"a": 1}), (3, [2, 3]), (5, "text")]
    assert [r.getMessage() for r in caplog.records] == [f"{path}: line 4 is not JSON (a write cut short?); skipped."]
    seen = []
    assert [k for k, _ in read_json_lines(path, on_bad_line=lambda k, err: seen.append((k, type(err))))] == [1, 3, 5]
    assert seen == [(4, json.JSONDecodeError)]

    def refuse(k, err):
        raise ValueError(f"line {k} refused")

    with pytest.raises(ValueError, match="line 4 refused"):
        list(read_json_lines(path, on_bad_line=refuse))
