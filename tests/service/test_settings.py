"""ServiceSettings: the bearer token from NAVIT_TOKEN or a token file."""

from __future__ import annotations

import pytest

from service.settings import ServiceSettings


def test_token_from_env(monkeypatch):
    monkeypatch.setenv("NAVIT_TOKEN", "from-env")
    assert ServiceSettings().bearer_token() == "from-env"
    monkeypatch.delenv("NAVIT_TOKEN")
    assert ServiceSettings().bearer_token() is None


def test_token_file_gives_its_first_line(tmp_path, monkeypatch):
    monkeypatch.delenv("NAVIT_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text("\n  s3cret  \nsecond line\n")
    assert ServiceSettings(token_file=token_file).bearer_token() == "s3cret"


def test_env_token_wins_over_the_token_file(tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.setenv("NAVIT_TOKEN", "from-env")
    assert ServiceSettings(token_file=token_file).bearer_token() == "from-env"


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_an_empty_token_file_is_an_error_not_an_open_service(tmp_path, monkeypatch, content):
    monkeypatch.delenv("NAVIT_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(content)
    with pytest.raises(ValueError, match="is empty"):
        ServiceSettings(token_file=token_file).bearer_token()


def test_a_missing_token_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("NAVIT_TOKEN", raising=False)
    with pytest.raises(ValueError, match="token file"):
        ServiceSettings(token_file=tmp_path / "absent").bearer_token()


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_a_holdout_fraction_outside_0_to_1_is_refused(fraction):
    with pytest.raises(ValueError, match="holdout_fraction"):
        ServiceSettings(dataset="d", holdout_fraction=fraction)
    assert ServiceSettings(dataset="d", holdout_fraction=0.1, holdout_seed=3).holdout_seed == 3
