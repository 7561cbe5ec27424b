"""`nanodreamer play`: message validation, sessions, and the page in headless Chromium."""

import asyncio
import gc
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import weakref

import pytest
from aiohttp import ClientSession, WSMsgType
from aiohttp.test_utils import TestServer
from conftest import cli, make_store, train_world_model

from nanodreamer.data import EpisodeStore
from nanodreamer.play import (
    MAX_MESSAGE,
    BadMessage,
    PlayConfig,
    build_shared,
    game_actions,
    make_app,
)
from nanodreamer.play import parse_message as parse

CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("play")
    data = make_store(root / "data", [30, 30, 30], size=16).path
    train_world_model(root, data)
    cli(f"train agent --data {data} --world-model {root}/dyn --out {root}/agent --steps 2 "
        "--seq-len 8")  # fmt: skip
    return root, data


@pytest.mark.parametrize(
    "text, error",
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"type": 3}', "JSON object"),
        ('{"type": "fly"}', "unknown command 'fly'"),
        ('{"type": "action", "action": [0.5]}', "list of 2 numbers"),
        ('{"type": "action", "action": "left"}', "list of 2 numbers"),
        ('{"type": "action", "action": [true, 0]}', "list of 2 numbers"),
        ('{"type": "action", "action": [0, 1.5]}', "out of range"),
        ('{"type": "action", "action": [NaN, 0]}', "out of range"),
        ('{"type": "run", "running": "yes"}', '"running" must be true or false'),
        ('{"type": "reset", "episode": 3}', "integer in [0, 3)"),
        ('{"type": "reset", "episode": -1}', "integer in [0, 3)"),
        ('{"type": "step", "pad": "' + "x" * MAX_MESSAGE + '"}', "message too large"),
    ],
)
def test_malformed_messages_are_named(text, error):
    with pytest.raises(BadMessage, match=re.escape(error)):
        parse(text, action_dim=2, episodes=3)


def test_valid_messages_parse():
    assert parse('{"type": "action", "action": [-1, 0.25]}', 2, 3)["action"] == [-1.0, 0.25]
    assert parse('{"type": "reset", "episode": null}', 2, 3) == {"type": "reset", "episode": None}
    assert parse('{"type": "run", "running": false}', 2, 0)["running"] is False


async def receive_until(ws, kind: str) -> dict:
    """Skip frames and other messages until one of type `kind` arrives."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout=30)
        if msg.type == WSMsgType.TEXT and json.loads(msg.data)["type"] == kind:
            return json.loads(msg.data)
        assert msg.type in (WSMsgType.TEXT, WSMsgType.BINARY), msg


def serve_in_test(runs, check, **options) -> None:
    """Run `check(client_session, base_url, shared)` against a live server."""
    root, data = runs
    shared = build_shared(PlayConfig(run=str(root / "dyn"), data=str(data), **options))

    async def main():
        server = TestServer(make_app(shared))
        await server.start_server()
        try:
            async with ClientSession() as http:
                await check(http, str(server.make_url("")), shared)
        finally:
            await server.close()

    asyncio.run(main())


def test_bad_messages_answered_without_hurting_any_session(runs):
    async def check(http, url, shared):
        async with http.ws_connect(url + "/ws") as bad, http.ws_connect(url + "/ws") as good:
            for ws in (bad, good):
                hello = await receive_until(ws, "hello")
                assert hello["action_dim"] == 2 and hello["episodes"] == 3
                assert hello["action_names"] is None  # not an Atari game
                assert (await receive_until(ws, "status"))["frame"] == 0  # the first picture
            for text in ["{", '{"type": "warp"}', '{"type": "action", "action": [9, 9]}']:
                await bad.send_str(text)
                assert (await receive_until(bad, "error"))["message"]
            await bad.send_bytes(b"\x00" * 10)
            assert "not binary" in (await receive_until(bad, "error"))["message"]
            await bad.send_str('{"type": "step", "x": "' + "y" * 4000 + '"}')
            assert "too large" in (await receive_until(bad, "error"))["message"]
            await bad.send_str('{"type": "agent", "enabled": true}')
            assert "--agent" in (await receive_until(bad, "error"))["message"]
            await bad.send_str("z" * 200_000)  # beyond the socket's limit: that socket closes
            while not bad.closed:
                await asyncio.wait_for(bad.receive(), timeout=30)
            await good.send_str('{"type": "action", "action": [0.5, -0.5]}')
            assert (await receive_until(good, "status"))["action"] == [0.5, -0.5]
            await good.send_str('{"type": "step"}')
            frame = await asyncio.wait_for(good.receive(), timeout=30)
            assert frame.type == WSMsgType.BINARY and frame.data[:2] == b"\xff\xd8"  # a JPEG
            assert (await receive_until(good, "status"))["frame"] == 1
            await good.send_str('{"type": "reset", "episode": 2}')
            assert (await receive_until(good, "status"))["frame"] == 0

    serve_in_test(runs, check)


def test_session_limit_and_sessions_freed_on_close(runs):
    async def check(http, url, shared):
        async with http.ws_connect(url + "/ws") as first:
            await receive_until(first, "hello")
            session = weakref.ref(next(iter(shared.sessions)))
            async with http.ws_connect(url + "/ws") as second:
                error = await receive_until(second, "error")
                assert "server full: 1 sessions" in error["message"]
                assert "--max-sessions" in error["message"]
            async with http.get(url + "/status") as reply:
                assert (await reply.json())["sessions"] == 1
        for _ in range(100):
            async with http.get(url + "/status") as reply:
                if (await reply.json())["sessions"] == 0:
                    break
            await asyncio.sleep(0.05)
        assert not shared.sessions
        gc.collect()
        assert session() is None  # the world model state is gone
        async with http.ws_connect(url + "/ws") as again:  # the slot is free again
            assert (await receive_until(again, "hello"))["episodes"] == 3

    serve_in_test(runs, check, max_sessions=1)


def test_running_streams_frames_and_unconditioned_start(runs):
    async def check(http, url, shared):
        async with http.ws_connect(url + "/ws") as ws:
            await receive_until(ws, "hello")
            await receive_until(ws, "status")  # episode 0's last context frame
            await ws.send_str('{"type": "reset", "episode": null}')
            assert (await receive_until(ws, "status"))["frame"] == 1  # the model's own frame
            await ws.send_str('{"type": "run", "running": true}')
            frames = 0
            while frames < 5:
                msg = await asyncio.wait_for(ws.receive(), timeout=30)
                frames += msg.type == WSMsgType.BINARY
            await ws.send_str('{"type": "run", "running": false}')
            status = await receive_until(ws, "status")
            assert status["context"] == min(status["frame"], status["window"])

    serve_in_test(runs, check, fps=50)


def test_the_agent_can_drive(runs):
    async def check(http, url, shared):
        async with http.ws_connect(url + "/ws") as ws:
            assert (await receive_until(ws, "hello"))["agent"]
            await receive_until(ws, "status")
            await ws.send_str('{"type": "agent", "enabled": true}')
            assert (await receive_until(ws, "status"))["agent"]
            for _ in range(3):
                await ws.send_str('{"type": "step"}')
                status = await receive_until(ws, "status")
            assert status["frame"] == 3
            action = status["action"]  # the policy's choice, a bin centre in [-1, 1]
            assert len(action) == 2 and all(-1 < a < 1 and a != 0 for a in action)

    serve_in_test(runs, check, agent=str(runs[0] / "agent"))


def test_public_host_must_be_asked_for(runs, capsys):
    root, _ = runs
    with pytest.raises(SystemExit):
        cli(f"play --run {root / 'dyn'} --host 0.0.0.0")
    assert "--public" in capsys.readouterr().err


@pytest.fixture
def server(runs):
    root, data = runs
    command = [sys.executable, "-m", "nanodreamer", "play", "--run", str(root / "dyn")]
    command += ["--data", str(data), "--port", "0", "--fps", "15"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    assert line.startswith("nanodreamer play: http://127.0.0.1:"), line
    yield line.split()[-1].rstrip("/")
    process.terminate()
    process.wait(timeout=30)


def sessions(url: str) -> int:
    with urllib.request.urlopen(url + "/status") as reply:
        return json.load(reply)["sessions"]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")
def test_page_in_headless_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page()
        page.goto(server)
        page.wait_for_function("document.getElementById('frame').textContent > 3")
        assert sessions(server) == 1
        before = page.evaluate("document.getElementById('screen').toDataURL()")
        page.keyboard.down("ArrowUp")
        page.keyboard.down("ArrowLeft")
        page.wait_for_function("document.getElementById('action').textContent == '-1.00, 1.00'")
        frame = int(page.text_content("#frame"))
        page.wait_for_function(f"document.getElementById('frame').textContent > {frame + 3}")
        after = page.evaluate("document.getElementById('screen').toDataURL()")
        assert after != before
        fps = page.text_content("#fps")
        assert float(fps) > 0, fps
        page.wait_for_function(f"document.getElementById('fps').textContent != '{fps}'")
        assert "/ " in page.text_content("#context")
        pong = ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]  # its minimal set
        page.keyboard.up("ArrowUp")
        page.keyboard.down(" ")  # with ArrowLeft: LEFTFIRE, the 6th choice
        chosen = page.evaluate(
            f"(() => {{ actionNames = {json.dumps(pong)}; const a = currentAction(); "
            "actionNames = null; return a; })()"
        )
        assert chosen == [pytest.approx(5.5 / 6 * 2 - 1)]
        page.screenshot(path=tmp_path / "play.png")
        assert (tmp_path / "play.png").stat().st_size > 1000
        page.close()
        deadline = time.time() + 30
        while sessions(server) and time.time() < deadline:
            time.sleep(0.1)
        assert sessions(server) == 0
        browser.close()


def test_an_atari_world_names_its_choices(runs, tmp_path):
    root, data = runs
    assert game_actions(root / "dyn", None) is None  # its own dataset: not a game
    with EpisodeStore.create(tmp_path, env="atari:Pong", obs_shape=(64, 64, 3), action_dim=1,
                             action_bins=[6]) as store:  # fmt: skip
        assert game_actions(root / "dyn", store)[:4] == ["NOOP", "FIRE", "RIGHT", "LEFT"]
