"""Every command and request in README.md and docs/*.md is checked against the code, so that
the docs cannot drift from it.

The code blocks of the markdown files are read and each command in them is handled:

- `playmodel CMD ...` (also `.venv/bin/playmodel`, `python -m training ...` under torchrun):
  the command line is parsed by CMD's own argument parser (options, choices, types), and a
  few run for real, shortened where a full run takes minutes (`slow`);
- `curl` and the Python script of docs/SERVER.md: against a real server on loopback (the
  bundled demo checkpoint), with `localhost:8000` and `ID` replaced by its address and real
  ids; each must succeed;
- `python bench/X.py ...`, `python docs/X.py ...`: the script's own parser takes the line;
- protocol messages (docs/PROTOCOL.md): decoded by `server/protocol.py` as the server and the
  client decode them; the controls file (docs/CLIENT.md): loaded by the client;
- Python sketches (docs/MODEL.md, docs/SIMULATION.md) that use objects they do not make: their
  imports run and every call of a documented class or function fits its signature.

Commands this test cannot run here (Docker, a GPU pod, installs, ssh) are listed in
`NOT_RUN` with the reason, and a command no rule knows fails the test: a new command in the
docs needs a check or a listed reason. Inline code spans in prose that start with `playmodel`
or `python X.py` are checked too, option by option (they are often synopses, `[--opt N]`).
A code block with no language is output or a diagram, not a command.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import inspect
import io
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import httpx
import pytest

import playmodel

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHARED = ROOT.parent / "shared"


# ---------------------------------------------------------------------------- the markdown
@dataclass(frozen=True)
class Block:
    file: str  # relative to the repository
    line: int  # of the opening fence
    lang: str
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    blocks, lang, start, body = [], None, 0, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, body = line[3:].strip(), number, []
            else:
                blocks.append(Block(str(path.relative_to(ROOT)), start, lang, "\n".join(body)))
                lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def all_blocks(lang: str | None = None) -> list[Block]:
    blocks = [b for path in DOCS for b in code_blocks(path)]
    return [b for b in blocks if lang is None or b.lang == lang]


def shell_commands(block: Block) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block.text)
    commands = []
    for line in joined.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()  # a comment (not the # in a URL)
        if line:
            commands.append(line)
    return commands


def inline_commands() -> list[tuple[str, str]]:
    """(where, command) of each inline code span of the prose that is a command."""
    found = []
    for path in DOCS:
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
        text = re.sub(r"\s*\n\s*", " ", text)  # spans wrap across lines
        for span in re.findall(r"`([^`]+)`", text):
            span = span.replace("\\|", "|")
            if re.match(r"(\.venv/bin/)?playmodel [a-z]|python (bench|docs)/\w+\.py", span):
                found.append((str(path.relative_to(ROOT)), span))
    return found


# Commands not run here, with the reason. Each key is the start of a command line.
NOT_RUN = {
    "make play": "opens the window; `playmodel play` is checked, and the target below",
    "make test": "runs this suite",
    "python3.11 -m venv": "makes a virtual environment",
    ".venv/bin/pip install": "installs packages (the extras it names are checked below)",
    "git clone": "needs the network",
    "cd ": "changes folder",
    ". /workspace/venv/bin/activate": "a GPU pod's environment",
    "docker compose": "needs Docker and a GPU host (tests/test_deploy.py checks the files)",
    "echo PLAYMODEL_CHECKPOINT": "writes the compose .env file",
    "tensorboard": "a viewer that keeps running",
    "ssh ": "a tunnel to a remote pod",
    "grep frames_per_s": "reads a training run's metrics (the key is checked below)",
    "deploy/check-image.sh": "needs root, podman and half an hour (tests/test_deploy.py runs its"
    " --plan and its smoke client)",
}


def not_run(command: str) -> str | None:
    return next((why for start, why in NOT_RUN.items() if command.startswith(start)), None)


def test_what_is_not_run_is_still_true():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("play", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), f"make {target}: no such target"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for block in all_blocks("bash"):
        for command in shell_commands(block):
            for names in re.findall(r"\.\[([\w,]+)\]", command):
                for name in names.split(","):
                    assert name in extras, f"{block}: no extra {name!r} in pyproject.toml"
    assert "frames_per_s" in (ROOT / "training" / "train.py").read_text()


# ---------------------------------------------------------------------------- parsers
class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def parser_of(words: list[str]) -> argparse.ArgumentParser:
    """The argument parser of `playmodel CMD` or of `python SCRIPT.py`, without running it:
    the first parser the command asks to parse its arguments is handed back instead (raised
    as _Parsed), so the command does nothing else."""
    original = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        if self.prog == "playmodel":  # the dispatcher: let it pick the command
            return original(self, args, namespace)
        raise _Parsed(self)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(_Parsed) as caught:
        mp.setattr(argparse.ArgumentParser, "parse_args", capture)
        if words[0] == "playmodel":
            assert words[1] in playmodel.COMMANDS, f"no command `playmodel {words[1]}`"
            playmodel.main([words[1], "--help"])
        else:
            script = ROOT / words[1]
            assert script.is_file(), f"no script {words[1]}"
            mp.setattr(sys, "argv", [str(script)])
            mp.syspath_prepend(str(script.parent))
            runpy.run_path(str(script), run_name="__main__")
    return caught.value.parser


def command_words(command: str) -> list[str]:
    """A documented command as `playmodel CMD ARGS` or `python SCRIPT ARGS`: environment
    assignments and torchrun's own options dropped, optional groups `[...]` opened."""
    words = shlex.split(command.replace("[", " ").replace("]", " "))
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words.pop(0)
    if words and words[0] == ".venv/bin/playmodel":
        words[0] = "playmodel"
    if words and words[0] == "torchrun":  # torchrun ... -m training train ARGS
        m = words.index("-m")
        assert words[m + 1] == "training", command
        words = ["playmodel", *words[m + 2 :]]
    if words[:2] == ["python", "-m"]:
        words = ["playmodel", *words[3:]]
    return words


def parse_fully(words: list[str]) -> argparse.Namespace:
    parser = parser_of(words)
    start = 2
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parser.parse_args(words[start:])
    except SystemExit:
        pytest.fail(f"`{' '.join(words)}` is refused: {stderr.getvalue().strip()}")
    if words[:2] == ["playmodel", "play"]:  # the client checks more after parsing
        from client.app import parse_args

        with contextlib.redirect_stderr(stderr):
            try:
                args = parse_args(words[2:])
            except SystemExit:
                pytest.fail(f"`{' '.join(words)}` is refused: {stderr.getvalue().strip()}")
    return args


def documented_commands() -> list[tuple[str, str]]:
    """(where, command) of every command line in a shell code block."""
    return [(str(b), c) for b in all_blocks("bash") for c in shell_commands(b)]


def _runs_a_command(command: str) -> bool:
    return bool(
        re.match(r"([A-Z_]+=\S+ )*(\.venv/bin/)?playmodel |torchrun |python (bench|docs)/", command)
    )


def test_every_documented_command_is_checked_or_listed():
    unknown = [
        f"{where}: {command}"
        for where, command in documented_commands()
        if not (_runs_a_command(command) or command.startswith("curl ") or not_run(command))
    ]
    assert not unknown, "commands no check knows (add a check or a NOT_RUN reason):\n" + "\n".join(
        unknown
    )
    # Blocks in a language this test does not read are a new kind of example to check.
    languages = {b.lang for b in all_blocks()}
    assert languages <= {"", "bash", "python", "json"}, languages


@pytest.mark.parametrize(
    "where, command",
    [(w, c) for w, c in documented_commands() if _runs_a_command(c)],
)
def test_documented_command_line_is_accepted(where, command):
    parse_fully(command_words(command))


@pytest.mark.parametrize("where, command", inline_commands())
def test_inline_command_names_only_options_it_has(where, command):
    words = command_words(command)
    parser = parser_of(words)
    options = set(parser._option_string_actions)
    named = {w.split("=")[0] for w in words[2:] if w.startswith("--")}
    assert named <= options, f"{where}: `{command}` names {sorted(named - options)}"


# ---------------------------------------------------------------------------- requests
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from server.serve import ServerThread
    from server.settings import ServerSettings

    recordings = tmp_path_factory.mktemp("recordings")
    # A match's length is capped low so that the documented match script ends in seconds.
    settings = ServerSettings(port=0, recordings_dir=recordings, max_match_frames=300)
    with ServerThread(settings) as running:
        yield running


@pytest.fixture(scope="module")
def ids(server):
    """A finished match, and a session ended after two seconds of play with its recording:
    what `ID` stands for. Nothing is left running: matches run in the time live sessions
    leave, which on a busy 2-core machine is little."""
    match = httpx.post(f"{server.url}/v1/matches", json={"max_frames": 120}, timeout=60)
    assert match.status_code == 202, match.text
    done = httpx.get(
        f"{server.url}/v1/matches/{match.json()['match_id']}",
        params={"wait": True, "timeout": 120},
        timeout=130,
    ).json()
    assert done["status"] == "done", done
    created = httpx.post(
        f"{server.url}/v1/sessions", json={"policies": {"1": "approach", "2": "noop"}}, timeout=60
    )
    assert created.status_code == 201, created.text
    session = created.json()
    # Two seconds of play, or until a frame is played where a busy machine is slower: a
    # session with no frame has no recording to download.
    started, deadline = time.monotonic(), time.monotonic() + 120
    while time.monotonic() < deadline:
        described = httpx.get(f"{server.url}/v1/sessions/{session['session_id']}", timeout=60)
        if described.json().get("frame", 0) > 0 and time.monotonic() - started >= 2.0:
            break
        time.sleep(0.2)
    deleted = httpx.delete(
        f"{server.url}/v1/sessions/{session['session_id']}",
        headers={"X-Session-Token": session["session_token"]},
        timeout=60,
    )
    assert deleted.status_code == 204, deleted.text
    return {"session": session["session_id"], "match": done["match_id"]}


def _localised(text: str, server) -> str:
    return text.replace("localhost:8000", f"127.0.0.1:{server.settings.port}")


def _curl(command: str, server, ids, cwd: Path) -> subprocess.CompletedProcess:
    command = _localised(command, server)
    command = command.replace("/sessions/ID/", f"/sessions/{ids['session']}/")
    command = command.replace("/matches/ID/", f"/matches/{ids['match']}/")
    words = shlex.split(command)
    # Fail on an error status (and say it), as a user reading the answer would see it.
    return subprocess.run(
        [words[0], "-sS", "--fail-with-body", *words[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def curl_commands() -> list[tuple[str, str]]:
    return [(w, c) for w, c in documented_commands() if c.startswith("curl ")]


@pytest.mark.parametrize("where, command", curl_commands())
def test_documented_request_succeeds(where, command, server, ids, tmp_path):
    done = _curl(command, server, ids, tmp_path)
    assert done.returncode == 0, f"{where}: `{command}` failed:\n{done.stdout}{done.stderr}"
    if " -o " in command:
        out = tmp_path / shlex.split(command)[shlex.split(command).index("-o") + 1]
        assert out.read_bytes()[:4] == b"PAR1", f"{where}: {out.name} is not parquet"
    elif "/v1/sessions" in command and "POST" in command:
        assert "session_id" in json.loads(done.stdout), done.stdout


def test_documented_session_answer_has_the_fields_the_docs_show(server):
    """The comment under the session request in docs/SERVER.md shows the answer's fields."""
    block = next(b for b in all_blocks("bash") if '# {"session_id"' in b.text)
    shown = set(re.findall(r'"([a-z_]+)":', "".join(re.findall(r"^# (.*)$", block.text, re.M))))
    answer = httpx.post(f"{server.url}/v1/sessions", json={}, timeout=60).json()
    assert shown <= set(answer), sorted(shown - set(answer))


def test_documented_python_scripts_run(server, capsys):
    """Python blocks that talk to a server run as written against the real one."""
    scripts = [b for b in all_blocks("python") if "localhost:8000" in b.text]
    assert scripts, "docs/SERVER.md's match script is gone: update this test"
    for block in scripts:
        exec(compile(_localised(block.text, server), str(block), "exec"), {})
        assert "winner" in capsys.readouterr().out, block


# ---------------------------------------------------------------------------- examples
def test_protocol_messages_decode_as_documented():
    from server.protocol import decode_client, decode_server, encode

    blocks = [b for b in all_blocks("python") if b.file == "docs/PROTOCOL.md"]
    assert len(blocks) == 4, [str(b) for b in blocks]
    for block in blocks:
        # The frame example abbreviates port 2's player as `{"port": 2, ...}`.
        text = block.text.replace('{"port": 2, ...}', "None")
        message = eval(compile(text, str(block), "eval"), {})  # a literal with True/False/None
        if message["type"] == "frame":
            message["players"][1] = {**message["players"][0], "port": 2}
        decode = decode_client if message["type"] in ("hello", "input") else decode_server
        decoded = decode(encode(message))
        assert decoded.type == message["type"], block


def test_controls_file_example_loads(tmp_path):
    from client.controls import ControlsConfig

    block = next(b for b in all_blocks("json") if b.file == "docs/CLIENT.md")
    path = tmp_path / "controls.json"
    path.write_text(block.text)
    ControlsConfig.load(path)


def _sketch_types() -> dict:
    from model.simulation import Simulation
    from model.world_model import WorldModel

    return {"model": WorldModel, "sim": Simulation}


def test_python_sketches_call_what_exists_with_arguments_it_takes():
    """MODEL.md's and SIMULATION.md's sketches use objects they do not make (`prev`, a model):
    their imports run, and each call of an imported name or of a documented object's method
    binds to the real signature."""
    sketches = [
        b for b in all_blocks("python") if b.file in ("docs/MODEL.md", "docs/SIMULATION.md")
    ]
    assert sketches
    for block in sketches:
        tree = ast.parse(block.text, str(block))
        instances = _sketch_types()  # objects the sketch uses without making them
        names: dict = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = __import__(node.module, fromlist=[a.name for a in node.names])
                for alias in node.names:
                    names[alias.asname or alias.name] = getattr(module, alias.name)
        calls = 0
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            target = None
            if isinstance(node.func, ast.Name) and node.func.id in instances:
                # an instance called: an nn.Module's forward
                owner = instances[node.func.id]
                target = owner.forward.__get__(object.__new__(owner))
            elif isinstance(node.func, ast.Name) and node.func.id in names:
                target = names[node.func.id]
            elif isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
                owner = instances.get(node.func.value.id)
                if owner is not None:
                    assert hasattr(owner, node.func.attr), (
                        f"{block}: {owner.__name__} has no {node.func.attr}"
                    )
                    target = getattr(owner, node.func.attr)
                    if not isinstance(inspect.getattr_static(owner, node.func.attr), staticmethod):
                        target = target.__get__(object.__new__(owner))
            if target is None:
                continue
            positional = [None] * len(node.args)
            keywords = {k.arg: None for k in node.keywords if k.arg}
            try:
                inspect.signature(target).bind(*positional, **keywords)
            except TypeError as e:
                pytest.fail(f"{block}: `{ast.unparse(node)}` does not fit: {e}")
            calls += 1
        assert calls, block


# ---------------------------------------------------------------------------- real runs
@pytest.mark.slow
def test_documented_match_commands_run(tmp_path, monkeypatch):
    """docs/SIMULATION.md's matches, shortened to 120 frames, written where they say."""
    from server import match

    monkeypatch.chdir(ROOT)
    commands = [c for _, c in documented_commands() if c.startswith("playmodel match ")]
    assert len(commands) == 2
    for command in commands:
        words = command_words(command)[2:]
        if "--frames" in words:
            words[words.index("--frames") + 1] = "120"
        else:
            words += ["--frames", "120"]
        out = words.index("--out") + 1
        words[out] = str(tmp_path / Path(words[out]).name)
        assert match.main(words) == 0, command
        assert Path(words[out]).is_file()


@pytest.mark.slow
def test_documented_parse_command_runs(tmp_path, monkeypatch):
    """README's `parse` of the dev replays, into a temporary folder."""
    from training import ingest

    # The command names ../shared/replays/dev, as a user beside shared/ types it.
    assert (SHARED / "replays" / "dev").is_dir(), f"{SHARED / 'replays' / 'dev'} is not here"
    monkeypatch.chdir(ROOT)
    command = next(c for _, c in documented_commands() if "playmodel parse" in c)
    words = command_words(command)[2:]
    words[words.index("--out") + 1] = str(tmp_path / "dev")
    assert ingest.main(words) == 0
    assert (tmp_path / "dev" / "manifest.jsonl").is_file()
