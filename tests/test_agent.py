"""The agent's pure parts: its options (flags and DEPOT_API_AGENT_* variables), the backoff
of its retries, and the log that speaks once per change of state. The agent running against
a real server is in tests/e2e (test_machines.py, test_agent_failures.py)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import pytest

from depot_api.agent.options import AgentOptions, BadOption, agent_options
from depot_api.agent.retrying import Backoff, Trouble
from depot_api.cli import _parser, main

REQUIRED = ("--server", "http://api:8080", "--platform", "amd64", "--advertise", "bk-1:1234")
TOKEN = {"DEPOT_API_AGENT_TOKEN": "dpm_secret"}


def options(*flags: str, environ: Mapping[str, str] = TOKEN) -> AgentOptions:
    return agent_options(_parser().parse_args(["agent", *flags]), environ)


def test_backoff_doubles_up_to_its_cap_and_starts_over_on_reset() -> None:
    backoff = Backoff(1, 60)
    assert [backoff.next() for _ in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    backoff.reset()
    assert [backoff.next() for _ in range(3)] == [1, 2, 4]
    with pytest.raises(ValueError, match="first <= cap"):
        Backoff(10, 5)


def test_trouble_is_logged_when_it_starts_changes_and_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    trouble = Trouble(logging.getLogger("depot_api.test"))
    caplog.set_level(logging.DEBUG, logger="depot_api.test")
    for _ in range(5):
        trouble.report("unavailable", "server down")
    trouble.report("internal", "server broken")
    trouble.report("internal", "server broken")
    trouble.clear("server fine")
    trouble.clear("server fine")
    logged = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [entry for entry in logged if entry[0] != "DEBUG"] == [
        ("WARNING", "server down"),
        ("WARNING", "server broken"),
        ("INFO", "server fine"),
    ]
    assert len(logged) == 3 + 5  # every repeat is still there, at debug level


def test_flags_give_the_settings_and_defaults_fill_the_rest() -> None:
    parsed = options(*REQUIRED)
    config = parsed.config
    assert config.server == "http://api:8080"
    assert config.token == "dpm_secret"
    assert (config.platform, config.advertise, config.listen) == (
        "amd64",
        "bk-1:1234",
        "0.0.0.0:1234",
    )
    assert (config.buildkitd, config.state_dir, config.capacity) == (
        "buildkitd",
        Path("depot-agent-state"),
        1,
    )
    assert parsed.log_level == "info"


def test_every_option_comes_from_its_variable_and_a_flag_wins() -> None:
    environ = {
        "DEPOT_API_AGENT_SERVER": "https://depot.example.com/api/",
        "DEPOT_API_AGENT_TOKEN": " dpm_from_env\n",
        "DEPOT_API_AGENT_PLATFORM": "arm64",
        "DEPOT_API_AGENT_ADVERTISE": "[fd00::1]:1234",
        "DEPOT_API_AGENT_LISTEN": "[::]:4321",
        "DEPOT_API_AGENT_BUILDKITD": "/opt/bin/buildkitd",
        "DEPOT_API_AGENT_STATE_DIR": "/var/lib/agent",
        "DEPOT_API_AGENT_CAPACITY": "0",
        "DEPOT_API_AGENT_LOG_LEVEL": "DEBUG",
    }
    parsed = options(environ=environ)
    config = parsed.config
    assert config.server == "https://depot.example.com/api"
    assert config.token == "dpm_from_env"
    assert (config.platform, config.advertise, config.listen) == (
        "arm64",
        "[fd00::1]:1234",
        "[::]:4321",
    )
    assert (config.buildkitd, config.state_dir, config.capacity) == (
        "/opt/bin/buildkitd",
        Path("/var/lib/agent"),
        0,
    )
    assert parsed.log_level == "debug"

    flagged = options(
        "--platform", "amd64", "--capacity", "7", "--token", "dpm_flag", environ=environ
    )
    assert (flagged.config.platform, flagged.config.capacity) == ("amd64", 7)
    assert flagged.config.token == "dpm_flag"
    assert flagged.config.server == "https://depot.example.com/api"  # the rest from the variables


def test_docker_socket_chooses_the_engine_and_excludes_buildkitd() -> None:
    assert options(*REQUIRED).config.docker_socket is None
    chosen = options(*REQUIRED, "--docker-socket", "/var/run/docker.sock").config
    assert chosen.docker_socket == Path("/var/run/docker.sock")
    assert chosen.daemon_name == "the Docker Engine at /var/run/docker.sock"
    from_env = options(
        *REQUIRED, environ={**TOKEN, "DEPOT_API_AGENT_DOCKER_SOCKET": "/run/d.sock"}
    ).config
    assert from_env.docker_socket == Path("/run/d.sock")
    with pytest.raises(BadOption, match=r"^--docker-socket and --buildkitd .*give one of them$"):
        options(*REQUIRED, "--docker-socket", "/d.sock", "--buildkitd", "/bin/buildkitd")
    with pytest.raises(BadOption, match="DEPOT_API_AGENT_DOCKER_SOCKET and --buildkitd"):
        options(
            *REQUIRED,
            environ={
                **TOKEN,
                "DEPOT_API_AGENT_DOCKER_SOCKET": "/d.sock",
                "DEPOT_API_AGENT_BUILDKITD": "/bin/buildkitd",
            },
        )
    with pytest.raises(BadOption, match="--docker-socket must not be empty"):
        options(*REQUIRED, "--docker-socket", " ")


def test_an_empty_variable_counts_as_unset() -> None:
    parsed = options(*REQUIRED, environ={**TOKEN, "DEPOT_API_AGENT_BUILDKITD": ""})
    assert parsed.config.buildkitd == "buildkitd"


def test_missing_settings_are_named_with_their_variables() -> None:
    with pytest.raises(BadOption) as raised:
        options("--server", "http://api:8080", environ={})
    assert str(raised.value) == (
        "missing --token (or DEPOT_API_AGENT_TOKEN), --platform (or DEPOT_API_AGENT_PLATFORM), "
        "--advertise (or DEPOT_API_AGENT_ADVERTISE)"
    )


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ("127.0.0.1:18461", '"127.0.0.1:18461" is not a URL; give http://127.0.0.1:18461'),
        ("localhost:8080", '"localhost:8080" is not a URL; give http://localhost:8080'),
        ("api.internal", '"api.internal" is not a URL; give http://api.internal'),
        ("ftp://api:8080", "must start with http:// or https://"),
        ("http://", "needs a host"),
        ("http://api:99999", "a port 1-65535"),
        ("http://api:0", "a port 1-65535"),
        ("http://api:http", "a port 1-65535"),
        ("http://api:8080/?x=1", "without user, query or fragment"),
        ("http://api:8080#top", "without user, query or fragment"),
        ("http://user:pw@api:8080", "without user, query or fragment"),
        ("http://api :8080", "it has blanks in it"),
    ],
)
def test_a_server_that_is_not_a_url_is_refused(server: str, message: str) -> None:
    with pytest.raises(BadOption) as raised:
        options(*REQUIRED, "--server", server)
    assert str(raised.value).startswith(f'--server "{server}" ')
    assert message in str(raised.value)


@pytest.mark.parametrize(
    "server", ["http://api:8080", "https://api", "http://10.0.0.1:80/prefix", "http://[::1]:8080"]
)
def test_server_urls_people_write_are_taken(server: str) -> None:
    assert options(*REQUIRED, "--server", server).config.server == server


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--advertise", "buildkit-1", "must be HOST:PORT with a port 1-65535"),
        ("--advertise", "buildkit-1:0", "must be HOST:PORT"),
        ("--advertise", "buildkit-1:65536", "must be HOST:PORT"),
        ("--advertise", ":1234", "must be HOST:PORT"),
        ("--advertise", "tcp://buildkit-1:1234", "must be HOST:PORT"),
        ("--listen", "0.0.0.0", "must be HOST:PORT"),
        ("--listen", "0.0.0.0:x", "must be HOST:PORT"),
        ("--platform", "s390x", "must be one of amd64, arm64"),
        ("--capacity", "lots", "must be a whole number from 0 to 1000"),
        ("--capacity", "1001", "must be a whole number from 0 to 1000"),
        ("--capacity", "-1", "must be a whole number from 0 to 1000"),
        ("--log-level", "loud", "must be one of debug, info, warning, error, critical"),
        ("--buildkitd", " ", "must not be empty"),
        ("--state-dir", "", "must not be empty"),
        ("--token", "dpm_a b", "must be a machine token"),
        ("--token", "", "must be a machine token"),
        ("--build-insights", "maybe", "must be one of on, off"),
        ("--insights-buffer-mb", "0", "must be a whole number from 1 to 4096"),
        ("--insights-buffer-mb", "lots", "must be a whole number from 1 to 4096"),
        ("--insights-buffer-mb", "4097", "must be a whole number from 1 to 4096"),
    ],
)
def test_a_bad_value_is_named_with_its_flag(flag: str, value: str, message: str) -> None:
    with pytest.raises(BadOption) as raised:
        options(*REQUIRED, f"{flag}={value}")
    assert str(raised.value).startswith(f"{flag} ")
    assert message in str(raised.value)


def test_a_bad_variable_is_named() -> None:
    with pytest.raises(BadOption) as raised:
        options(*REQUIRED, environ={**TOKEN, "DEPOT_API_AGENT_CAPACITY": "lots"})
    assert str(raised.value) == (
        'DEPOT_API_AGENT_CAPACITY "lots" must be a whole number from 0 to 1000'
    )


def test_build_insights_are_on_by_default_and_bounded() -> None:
    default = options(*REQUIRED).config
    assert default.build_insights and default.insights_buffer_bytes == 64 << 20
    chosen = options(*REQUIRED, "--build-insights", "OFF", "--insights-buffer-mb", "3").config
    assert not chosen.build_insights and chosen.insights_buffer_bytes == 3 << 20
    from_env = options(*REQUIRED, environ={**TOKEN, "DEPOT_API_AGENT_BUILD_INSIGHTS": "off"}).config
    assert not from_env.build_insights


def test_listen_may_leave_the_host_out() -> None:
    assert options(*REQUIRED, "--listen", ":4321").config.listen == ":4321"


def test_help_names_every_variable_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["agent", "--help"])
    # argparse wraps lines; the words are what counts.
    text = " ".join(capsys.readouterr().out.split())
    for name in (
        "SERVER",
        "TOKEN",
        "PLATFORM",
        "ADVERTISE",
        "LISTEN",
        "BUILDKITD",
        "STATE_DIR",
        "CAPACITY",
        "LOG_LEVEL",
    ):
        assert f"env DEPOT_API_AGENT_{name};" in text
    for shown in (
        "DEPOT_API_AGENT_SERVER; required)",
        "DEPOT_API_AGENT_CAPACITY; default 1)",
        "DEPOT_API_AGENT_BUILDKITD; default buildkitd)",
        "DEPOT_API_AGENT_LOG_LEVEL; default info)",
        "DEPOT_API_AGENT_LISTEN; default 0.0.0.0 and the advertised port)",
    ):
        assert shown in text


def test_a_bad_option_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEPOT_API_AGENT_TOKEN", "dpm_secret")
    code = main(["agent", *REQUIRED, "--advertise", "bk-1"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err == (
        'depot-api agent: --advertise "bk-1" must be HOST:PORT with a port 1-65535, '
        "e.g. buildkit-1.internal:1234\n"
    )


def test_a_state_directory_it_cannot_make_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEPOT_API_AGENT_TOKEN", "dpm_secret")
    (tmp_path / "file").write_text("")
    state = tmp_path / "file" / "state"
    code = main(["agent", *REQUIRED, "--state-dir", str(state)])
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err.startswith(f"depot-api agent: cannot make --state-dir {state}: ")
    assert "Not a directory" in err
    assert len(err.splitlines()) == 1


def test_the_agent_reads_a_config_file_below_flags_and_variables(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        'server = "http://api:8080"\ntoken = "dpm_from_file"\nplatform = "arm64"\n'
        'advertise = "bk-1:1234"\ncapacity = 3\nlog_format = "json"\n'
    )
    parsed = options("--config", str(config), environ={})
    assert parsed.config.token == "dpm_from_file"
    assert (parsed.config.platform, parsed.config.capacity, parsed.log_format) == (
        "arm64",
        3,
        "json",
    )
    over = options("--capacity", "5", environ={"DEPOT_API_AGENT_CONFIG": str(config), **TOKEN})
    assert (over.config.capacity, over.config.token) == (5, "dpm_secret")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('sever = "http://x"\n', "unknown setting 'sever'; did you mean server?"),
        ("capacity = [\n", "is not valid TOML"),
        ("capacity = 5000\n", 'capacity in {file} "5000" must be a whole number from 0 to'),
        ('log_format = "xml"\n', 'log_format in {file} "xml" must be one of text, json'),
        ('buildkitd = "/b"\ndocker_socket = "/d.sock"\n', "choose two different daemons"),
    ],
)
def test_a_wrong_agent_config_file_is_one_line(content: str, message: str, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(content)
    with pytest.raises(BadOption) as raised:
        options(*REQUIRED, "--config", str(config))
    assert message.format(file=config) in str(raised.value)
    assert "\n" not in str(raised.value)
