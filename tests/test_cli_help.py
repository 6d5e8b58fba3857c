"""Every ``rnnserve`` help screen, read through the real app (rnnserve/cli.py, the console
script's object): no value shown for a flag (``--force <bool>``), arguments named the usual way
in usage lines (``CHECKPOINT``, not ``{checkpoint}``), one meaning per short option, help text
for every option, serve's shown defaults equal to ``ServerSettings``', ``rnnserve --version``,
and ``rnnserve demo --host`` reaching the address the server binds.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import typer.core
import typer.main
from typer.testing import CliRunner

from rnnserve import __version__
from rnnserve.cli import app
from tests.conftest import TINY_MODEL_NAMES

#: The console script ``pip install`` puts beside this interpreter (pyproject [project.scripts]).
RNNSERVE = str(Path(sys.executable).with_name("rnnserve"))


def _command_tree(command, path: tuple[str, ...] = ()):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _command_tree(sub, (*path, name))


COMMANDS = dict(_command_tree(typer.main.get_command(app)))


def _help(*path: str) -> str:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def _flat(text: str) -> str:
    """``text`` with every run of whitespace as one space (help wraps at the terminal width)."""
    return " ".join(text.split())


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda path: " ".join(path) or "rnnserve")
def test_help_screen_reads_like_a_cli(path):
    text = _help(*path)
    assert "<bool>" not in text
    assert not re.search(r"\{\w+\}", text), text
    usage = text.splitlines()[0]
    assert usage.startswith(" ".join(("Usage: rnnserve", *path)))
    command = COMMANDS[path]
    for param in command.params:
        if isinstance(param, typer.core.TyperArgument):
            word = param.name.upper()
            assert (word if param.required else f"[{word}]") in usage.split(), usage
        else:
            assert param.help, f"{param.opts[0]} of rnnserve {' '.join(path)} has no help text"
            assert param.opts[0] in text


def test_a_short_option_means_the_same_long_option_everywhere():
    meanings: dict[str, set[str]] = {}
    for command in COMMANDS.values():
        for param in command.params:
            if isinstance(param, typer.core.TyperArgument):
                continue
            longs = [opt for opt in param.opts if opt.startswith("--")]
            for short in (opt for opt in param.opts if not opt.startswith("--")):
                meanings.setdefault(short, set()).update(longs)
    assert meanings, "no command has a short option"
    assert {short: longs for short, longs in meanings.items() if len(longs) != 1} == {}
    assert "--version" not in meanings.get("-v", set())


def test_console_script_version_and_help():
    done = subprocess.run([RNNSERVE, "--version"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert (done.returncode, done.stdout.strip()) == (0, __version__), done.stderr
    done = subprocess.run([RNNSERVE, "-h"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0 and "<bool>" not in done.stdout
    assert all(f"  {path[0]} " in done.stdout for path in COMMANDS if len(path) == 1), done.stdout


def test_serve_module_entry_has_the_same_help():
    """``server.commands.main`` (``python -m rnnserve.server``) lays help out like the app."""
    done = subprocess.run(
        [sys.executable, "-c", "from rnnserve.server.commands import main; main()", "--help"],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    def options(text: str) -> str:  # without whitespace: wrapping may differ
        return "".join(text.split("Options:")[1].split())

    assert options(done.stdout) == options(_help("serve"))


def _shown_defaults(path: str) -> dict[str, str | None]:
    """Option name -> the ``[default: X]`` its help shows (``None``: shows none)."""
    shown = {}
    for param in COMMANDS[(path,)].params:
        if param.name != "help":
            found = re.search(r"\[default: ([^\]]+)\]", param.help or "")
            shown[param.name] = found.group(1) if found else None
    return shown


def _settings_default(field: str) -> str | None:
    from rnnserve.server.settings import ServerSettings

    default = ServerSettings.model_fields[field].default
    if isinstance(default, bool):
        return field.removesuffix("_enabled") if default else f"no-{field}"
    return None if default is None else str(default)


def test_serve_shows_the_servers_own_defaults():
    flat = _flat(_help("serve"))
    assert "-r, --repository <path> Model repository (Triton layout). " \
           "[default: model_repository]" in flat
    for name, shown in _shown_defaults("serve").items():
        field = "metrics_enabled" if name == "metrics" else name
        assert shown == _settings_default(field), name
        if shown is not None:
            assert f"[default: {shown}]" in flat


def test_demo_help_shows_the_servers_default_host():
    assert _shown_defaults("demo")["host"] == _settings_default("host")
    assert "--host <str>" in _flat(_help("demo"))


def test_demo_serves_on_the_host_it_is_given(tiny_checkpoints, tiny_repository, tmp_path):
    """Outputs already there, ``rnnserve demo --host`` goes straight to serving, bound to it."""
    from rnnserve.demo import DEMO_NAMES
    from rnnserve.repository import CONFIG_FILE

    out, repository = tmp_path / "runs", tmp_path / "repository"
    out.mkdir()
    for cell, name in DEMO_NAMES.items():
        (out / cell).symlink_to(tiny_checkpoints[cell], target_is_directory=True)
        shutil.copytree(tiny_repository / TINY_MODEL_NAMES[cell], repository / name)
        config = repository / name / CONFIG_FILE
        config.write_text(config.read_text().replace(TINY_MODEL_NAMES[cell], name))
    process = subprocess.Popen(
        [RNNSERVE, "demo", "--out", str(out), "--repository", str(repository),
         "--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if '"event": "ready"' in line:
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(180), "".join(lines)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        reader.join(10)
    events = [json.loads(line) for line in lines if line.startswith("{")]
    listening = [event for event in events if event.get("event") == "listening"]
    assert [event["host"] for event in listening] == ["127.0.0.1"], "".join(lines)
    assert any(event.get("event") == "ready" for event in events), "".join(lines)
