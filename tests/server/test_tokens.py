"""Tokens' pure parts (names, bindings) and their caps in server.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from server import tokens
from server.config import ServerConfig
from server.errors import ConfigError


@pytest.mark.parametrize(
    "name",
    ["web-1", "a", "db-2.example.com", "a" * 63, "a" * 32 + "." + "a" * 31, "0-0"],
)
def test_host_names_of_at_most_64_characters_are_node_names(name: str) -> None:
    assert tokens.valid_node_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "node-a\n",  # "$" in a match() would let this through
        "\nnode-a",
        "node-a\n\n",
        "a" * 32 + "." + "a" * 31 + "\n",
        "a" * 64,  # a label is at most 63
        "a" * 32 + "." + "a" * 32,  # 65
        ".".join(["a" * 63] * 4)[:253],
        "Web-1",
        "web_1",
        "-web",
        "web-",
        "web..1",
        ".web",
        "web.",
        "wéb",
    ],
)
def test_anything_else_is_not(name: str) -> None:
    assert not tokens.valid_node_name(name)


def test_a_binding_allows_its_names_or_its_pattern_or_any_name() -> None:
    names = tokens.binding(["db-2", "db-3"], None)
    assert names.bound and names.allows("db-2") and not names.allows("db-20")
    pattern = tokens.binding(None, "web-[0-9]*")
    assert pattern.allows("web-1") and pattern.allows("web-12.example.com")
    assert not pattern.allows("web-x") and not pattern.allows("WEB-1")
    assert not tokens.UNBOUND.bound and tokens.UNBOUND.allows("anything")
    assert str(names) == "only the name(s) db-2, db-3"
    assert str(pattern) == "only names matching 'web-[0-9]*'"


@pytest.mark.parametrize("pattern", ["web-*", "db-?", "*.example.com", "k[!0]-[a-c]"])
def test_shell_patterns_bind(pattern: str) -> None:
    assert tokens.pattern_problem(pattern) is None


@pytest.mark.parametrize("pattern", ["", "Web-*", "web/*", "web-*\n", "a" * 254, "web *"])
def test_other_patterns_do_not(pattern: str) -> None:
    assert "may hold only" in (tokens.pattern_problem(pattern) or "")


def test_parse_takes_a_token_and_nothing_around_it() -> None:
    text = "plumb1.0123abcd." + "s" * 32 + "." + "f" * 64
    token = tokens.parse(f" {text}\n")
    assert token is not None and str(token) == text
    assert tokens.parse(text + "x") is None
    assert tokens.parse("x" + text) is None


def test_the_caps_default_to_7_days_and_1000_and_are_saved(tmp_path: Path) -> None:
    config = ServerConfig(tmp_path)
    assert (config.token_max_ttl_s, config.token_max_uses) == (604800, 1000)
    config.token_max_uses = 20
    config.save()
    assert "token_max_uses = 20\n" in (tmp_path / "server.toml").read_text()
    assert ServerConfig.load(tmp_path).token_max_uses == 20


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("token_max_uses = 0", "token_max_uses must be at least 1, got 0"),
        ('token_max_uses = "many"', "token_max_uses must be a whole number, got 'many'"),
        ("token_max_ttl_s = 1.5", "token_max_ttl_s must be a whole number, got 1.5"),
        ("token_max_ttl_s = true", "token_max_ttl_s must be a whole number, got True"),
    ],
)
def test_a_cap_that_is_no_positive_number_is_refused(
    tmp_path: Path, line: str, message: str
) -> None:
    (tmp_path / "server.toml").write_text(f'listen = "0.0.0.0:8443"\n{line}\n')
    with pytest.raises(ConfigError, match=message):
        ServerConfig.load(tmp_path)


def test_a_cap_written_as_a_string_of_digits_is_taken(tmp_path: Path) -> None:
    (tmp_path / "server.toml").write_text('token_max_ttl_s = "3600"\n')
    assert ServerConfig.load(tmp_path).token_max_ttl_s == 3600
