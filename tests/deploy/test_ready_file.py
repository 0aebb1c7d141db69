"""The ready file: written whole, read back as written, absent or foreign reads as None."""

from __future__ import annotations

from pathlib import Path

from deploy.ready_file import ReadyFile


def test_a_ready_file_reads_back_what_was_written(tmp_path: Path) -> None:
    ready = ReadyFile(api="http://127.0.0.1:8000", flight="grpc+tcp://127.0.0.1:8815", pid=42)
    ready.write(tmp_path / "sub" / "ready.json")
    assert ReadyFile.read(tmp_path / "sub" / "ready.json") == ready
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["ready.json"]  # no temp left


def test_an_absent_or_foreign_file_is_not_ready(tmp_path: Path) -> None:
    assert ReadyFile.read(tmp_path / "absent.json") is None
    for text in ("", "{", "[]", '{"api": "http://x"}', '{"api": "a", "flight": "f", "pid": "x"}'):
        (tmp_path / "f.json").write_text(text)
        assert ReadyFile.read(tmp_path / "f.json") is None, text
