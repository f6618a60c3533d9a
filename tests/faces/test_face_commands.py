"""``python -m mfassl_faces COMMAND``: the face command table on the shared dispatcher."""

from __future__ import annotations



def test_face_commands_reach_their_entry_points(monkeypatch, capsys) -> None:
    from mfassl_faces import cli_tasks
    from mfassl_faces.__main__ import COMMANDS, main

    seen: list[list[str]] = []
    monkeypatch.setattr(cli_tasks, "main", lambda argv: seen.append(list(argv)) or 0)
    for command in ("demo", "pretrain", "benchmark", "probe"):
        assert main([command, "--seed", "3"]) == 0
    assert seen == [[c, "--seed", "3"] for c in ("demo", "pretrain", "benchmark", "probe")]
    assert list(COMMANDS) == ["axis", "landmarks", "demo", "pretrain", "benchmark", "score", "probe"]
    assert main(["--help"]) == 0
    listing = capsys.readouterr().out
    assert "MFASSL_FACES_DEMO_DIR" in listing and "~/.cache/mfassl/faces_demo" in listing
    assert main([]) == 2 and main(["segment"]) == 2


def test_demo_folder_follows_the_environment(monkeypatch, tmp_path) -> None:
    from mfassl_faces.cli_tasks import build_parser
    from mfassl_faces.demo import default_demo_dir

    monkeypatch.setenv("MFASSL_FACES_DEMO_DIR", str(tmp_path / "faces"))
    assert default_demo_dir() == tmp_path / "faces"
    monkeypatch.delenv("MFASSL_FACES_DEMO_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_demo_dir() == tmp_path / "home" / ".cache" / "mfassl" / "faces_demo"
    assert build_parser().parse_args(["demo"]).out is None  # resolved when the command runs, not at import
