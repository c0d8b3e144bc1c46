"""The agent's settings file: what it accepts, what it refuses and how it says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig, config_path, load
from agent.errors import ConfigError
from agent.main import main


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_every_setting_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'state_dir = "/srv/plumb"\ninterval = 600\nsplay = 2.5\nwatch = false\n'
        'confirm_timeout = 3\nlog_level = "debug"\n',
    )
    assert load(path, required=True) == AgentConfig(
        state_dir=Path("/srv/plumb"),
        interval=600.0,
        splay=2.5,
        watch=False,
        confirm_timeout=3.0,
        log_level="debug",
    )


def test_a_missing_default_file_means_defaults(tmp_path: Path) -> None:
    assert load(tmp_path / "absent.toml", required=False) == AgentConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("intervall = 5\n", "unknown setting 'intervall'"),
        ('interval = "5m"\n', "interval must be a number of seconds, got '5m'"),
        ("interval = true\n", "interval must be a number of seconds, got True"),
        ("watch = 1\n", "watch must be true or false, got 1"),
        ("splay = -1\n", "splay must not be negative"),
        ('log_level = "loud"\n', "log_level must be one of debug, info, warning, error"),
        ("interval = \n", "line 1"),
    ],
)
def test_a_bad_file_is_refused_naming_file_and_setting(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=str(path)) as info:
        load(path, required=False)
    assert message in str(info.value)


def test_a_file_asked_for_by_name_must_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PLUMB_AGENT_CONFIG", raising=False)
    assert config_path(None) == (Path("/etc/plumb/agent.toml"), False)
    monkeypatch.setenv("PLUMB_AGENT_CONFIG", str(tmp_path / "env.toml"))
    assert config_path(None) == (tmp_path / "env.toml", True)
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "env.toml", required=True)


def test_flags_override_the_file_and_the_file_overrides_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seen through `status`, which reads the state dir the settings chose."""
    monkeypatch.delenv("PLUMB_STATE_DIR", raising=False)
    from_file = tmp_path / "from-file"
    path = write(tmp_path, f'state_dir = "{from_file}"\n')
    assert main(["--config", str(path), "status"]) == 1
    assert str(from_file) in capsys.readouterr().err  # not enrolled: names the state dir
    from_flag = tmp_path / "from-flag"
    assert main(["--config", str(path), "--state-dir", str(from_flag), "status"]) == 1
    assert str(from_flag) in capsys.readouterr().err


def test_a_bad_file_stops_the_agent_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "interval = 'soon'\n")
    assert main(["--config", str(path), "status"]) == 1
    assert f"plumb-agent: {path}: interval must be a number of seconds" in capsys.readouterr().err
