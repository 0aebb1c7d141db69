"""Where the bearer token comes from and how a header is checked."""

import pytest

from packer.contract.auth import bearer_headers, bearer_matches, read_token


def test_token_file_wins_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NAVIT_TOKEN", "from-env")
    path = tmp_path / "token"
    path.write_text("\n  from-file  \nsecond line\n")
    assert read_token(path) == "from-file"
    assert read_token(None) == "from-env"


def test_no_token_anywhere_is_none(monkeypatch):
    monkeypatch.delenv("NAVIT_TOKEN", raising=False)
    assert read_token(None) is None


@pytest.mark.parametrize("content", [None, "", "\n  \n"])
def test_a_named_token_file_that_is_missing_or_empty_is_an_error(tmp_path, content):
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match="token file"):
        read_token(path)


def test_header_matches_only_the_exact_token():
    headers = bearer_headers("s3cret")
    assert headers == {"authorization": "Bearer s3cret"}
    assert bearer_matches(headers["authorization"], "s3cret")
    assert bearer_matches(b"Bearer s3cret", "s3cret")
    assert not bearer_matches("Bearer s3cre", "s3cret")
    assert not bearer_matches("s3cret", "s3cret")
    assert not bearer_matches(None, "s3cret")
    assert bearer_headers(None) == {}
