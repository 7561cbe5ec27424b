"""Play inside a trained world model in the browser: `nanodreamer play --run RUN`.

An aiohttp server serves one page (play.html) and one websocket per browser tab; each tab's
`Session` is a `WorldModel` (shared weights, its own context and KV cache) that imagines the
next frame from the keys held down, or from a policy when an agent run is given.

Protocol. The page sends JSON text messages, at most MAX_MESSAGE bytes:
    {"type": "reset", "episode": i | null}   start from episode i's first frames, or from the
                                             model's own unconditioned first frame
    {"type": "action", "action": [a, ...]}    the action held from now on, each in [-1, 1]
    {"type": "run", "running": bool}          generate continuously at --fps, or pause
    {"type": "step"}                          one frame (while paused)
    {"type": "agent", "enabled": bool}        let the policy drive (needs --agent)
The server sends each frame as a binary JPEG message, followed by a JSON status message
{"type": "status", "fps", "context", "window", "action", "frame", "agent", "running"}; a bad
message is answered with {"type": "error", "message": ...} and changes nothing. The first
message, {"type": "hello", "action_dim", "action_names", ...}, names an Atari game's choices
(ALE's "NOOP", "UPFIRE", ...), which the page picks with the arrows and space.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from aiohttp import WSMsgType, web
from PIL import Image

from nanodreamer.data import EpisodeStore
from nanodreamer.envs.atari import action_meanings, atari_id
from nanodreamer.errors import UserError
from nanodreamer.eval.agent import AgentPolicy
from nanodreamer.eval.pictures import to_uint8
from nanodreamer.recipes import knob
from nanodreamer.runs import load_world_model, read_agent_run, read_run
from nanodreamer.tokenizer import frames_from_uint8
from nanodreamer.world import WorldModel

MAX_MESSAGE = 1024  # bytes; every valid message is far smaller
SHARED = web.AppKey("shared", object)
PAGE = Path(__file__).with_name("play.html")


@dataclass
class PlayConfig:
    run: str  # a dynamics (or agent) run
    data: str | None = knob(None, "dataset whose episodes give start frames")
    agent: str | None = knob(None, "agent run that can drive (a toggle on the page)")
    host: str = knob("127.0.0.1", "address to listen on")
    port: int = knob(8000, "0 picks a free port")
    max_sessions: int = knob(4, "browser tabs at once")
    fps: float = knob(20.0, "target frames/s (slower if the model is)")
    steps: int = knob(4, "denoising steps per frame")
    context: int = knob(4, "real start frames from --data")
    device: str | None = knob(None, "cpu or cuda (default: cuda when available)")


@dataclass
class Shared:
    """What every session reads: weights, dataset, limits."""

    config: PlayConfig
    world: WorldModel  # template: its tokenizer and dynamics modules are shared
    store: object | None
    device: torch.device
    action_names: list[str] | None = None  # an Atari game's choices: the page maps keys to them
    sessions: set = field(default_factory=set)

    @property
    def action_dim(self) -> int:
        return self.world.dynamics.config.action_dim

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        c = self.world.tokenizer.config
        return c.channels, c.image_size, c.image_size


class BadMessage(ValueError):
    """A message from the page that is answered with an error and otherwise ignored."""


def parse_message(text: str, action_dim: int, episodes: int) -> dict:
    """Validate one message from the page; BadMessage names what is wrong."""
    if len(text.encode()) > MAX_MESSAGE:
        raise BadMessage(f"message too large ({len(text.encode())} bytes, at most {MAX_MESSAGE})")
    try:
        message = json.loads(text)
    except json.JSONDecodeError:
        raise BadMessage("message is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise BadMessage('message must be a JSON object with a string "type"')
    kind, number = message["type"], lambda x: isinstance(x, int | float) and type(x) is not bool
    if kind == "action":
        action = message.get("action")
        if type(action) is not list or len(action) != action_dim or not all(map(number, action)):
            raise BadMessage(f'"action" must be a list of {action_dim} numbers')
        if not all(math.isfinite(a) and -1.0 <= a <= 1.0 for a in action):
            raise BadMessage(f"action {action} out of range: each value must be in [-1, 1]")
        return {"type": kind, "action": [float(a) for a in action]}
    if kind in ("run", "agent"):
        key = "running" if kind == "run" else "enabled"
        if not isinstance(message.get(key), bool):
            raise BadMessage(f'"{key}" must be true or false')
        return {"type": kind, key: message[key]}
    if kind == "reset":
        episode = message.get("episode")
        if episode is not None and not (type(episode) is int and 0 <= episode < episodes):
            raise BadMessage(f'"episode" must be null or an integer in [0, {episodes})')
        return {"type": kind, "episode": episode}
    if kind == "step":
        return {"type": kind}
    raise BadMessage(f"unknown command {kind!r}: use reset, action, run, step or agent")


class Session:
    """One tab's world: context, KV cache, held action, optional policy."""

    def __init__(self, shared: Shared):
        self.shared, world = shared, shared.world
        self.world = WorldModel(world.tokenizer, world.dynamics, steps=world.steps)
        self.action = torch.zeros(1, shared.action_dim)
        self.policy, self.agent, self.policy_first = None, False, True
        self.running, self.frames, self.context, self.fps = False, 0, 0, 0.0
        self.last_frame: np.ndarray | None = None  # (H,W,C) uint8, what the policy sees

    def reset(self, episode: int | None) -> torch.Tensor:
        """Start from episode `episode`'s first frames, or from nothing (None) -> the frame
        (C,H,W) to show: the last real one, or the model's own first frame."""
        d = self.shared.device
        if episode is None:
            frames = torch.zeros(1, 0, *self.shared.frame_shape, device=d)
            actions, has_action = torch.zeros(1, 0, self.shared.action_dim), None
        else:
            data = self.shared.store[episode]
            n = min(self.shared.config.context, len(data["obs"]), self.world.window - 1)
            frames = frames_from_uint8(torch.as_tensor(data["obs"][:n], device=d))[None]
            actions = torch.as_tensor(data["action"][:n])[None]
            labelled = bool(self.shared.store.labelled[episode])
            has_action = ~torch.as_tensor(data["is_first"][:n])[None] & labelled
        self.world.reset(frames, actions, has_action)
        self.frames, self.context, self.policy_first = 0, frames.shape[1], True
        if self.policy is not None:
            self.policy.reset(0)
        return frames[0, -1] if frames.shape[1] else self.step()

    def step(self) -> torch.Tensor:
        """Imagine one frame (C,H,W) with the held action, or the policy's."""
        if self.agent and self.policy is not None and self.last_frame is not None:
            chosen = self.policy.act(self.last_frame[None], np.array([self.policy_first]))
            self.action = torch.as_tensor(chosen, dtype=torch.float32)
            self.policy_first = False
        frame = self.world.step(self.action)[0]
        self.frames += 1
        self.context = min(self.context + 1, self.world.window - 1)
        return frame

    def status(self) -> dict:
        state = {"type": "status", "fps": round(self.fps, 1), "context": self.context}
        state |= {"window": self.world.window - 1, "frame": self.frames, "agent": self.agent}
        action = [round(a, 3) for a in self.action[0].tolist()]
        return state | {"action": action, "running": self.running}


def build_shared(config: PlayConfig) -> Shared:
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    world = load_world_model(config.run, device, steps=config.steps)
    tc = world.tokenizer.config
    store = None
    if config.data is not None:
        store = EpisodeStore(config.data)
        if tuple(store.manifest["obs_shape"]) != (tc.image_size, tc.image_size, tc.channels):
            raise UserError(
                f"{config.data} holds {store.manifest['obs_shape']} frames, the world model "
                f"{tc.image_size}x{tc.image_size}x{tc.channels}: pass its own dataset"
            )
    if config.agent is not None:
        agent_dim = read_agent_run(config.agent)["model_config"]["action_dim"]
        if agent_dim != world.dynamics.config.action_dim:
            raise UserError(
                f"the agent {config.agent} acts in {agent_dim}-D, the world model "
                f"{config.run} in {world.dynamics.config.action_dim}-D: pick matching runs"
            )
    if config.max_sessions < 1:
        raise UserError(f"--max-sessions must be at least 1, got {config.max_sessions}")
    if config.fps <= 0:
        raise UserError(f"--fps must be positive, got {config.fps}")
    return Shared(config, world, store, device, game_actions(config.run, store))


def game_actions(run: str, store: EpisodeStore | None) -> list[str] | None:
    """An Atari game's action names (the env of `store`, else of the run's own dataset)."""
    data = Path(read_run(run).get("data") or "")
    if store is None and (data / "manifest.json").exists():
        store = EpisodeStore(data)
    env = store.manifest["env"] if store is not None else ""
    return action_meanings(env) if atari_id(env) else None


async def index(request: web.Request) -> web.Response:
    return web.Response(text=PAGE.read_text(), content_type="text/html")


async def status(request: web.Request) -> web.Response:
    shared: Shared = request.app[SHARED]
    counts = {"sessions": len(shared.sessions), "max_sessions": shared.config.max_sessions}
    return web.json_response(counts)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    shared: Shared = request.app[SHARED]
    # aiohttp itself closes the socket on anything over 64 KiB; smaller oversized messages
    # get an error answer from parse_message
    ws = web.WebSocketResponse(max_msg_size=64 * 1024)
    await ws.prepare(request)
    if len(shared.sessions) >= shared.config.max_sessions:
        full = f"server full: {shared.config.max_sessions} sessions in use; close another tab"
        await ws.send_json({"type": "error", "message": full + " or raise --max-sessions"})
        await ws.close()
        return ws
    session = Session(shared)
    shared.sessions.add(session)
    try:
        await serve_session(ws, session, shared)
    finally:  # the last reference: its context and KV cache are freed with it
        session.running = False
        shared.sessions.discard(session)
        if shared.device.type == "cuda":
            torch.cuda.empty_cache()
    return ws


async def serve_session(ws: web.WebSocketResponse, session: Session, shared: Shared) -> None:
    loop = asyncio.get_running_loop()
    lock = asyncio.Lock()  # one model call at a time per session

    async def run_model(fn, *args):
        async with lock:
            return await loop.run_in_executor(None, fn, *args)

    async def send_frame(frame: torch.Tensor) -> None:
        pixels = to_uint8(frame)
        jpeg, gray = io.BytesIO(), pixels.shape[-1] == 1
        Image.fromarray(pixels[..., 0] if gray else pixels).save(jpeg, "JPEG", quality=90)
        await ws.send_bytes(jpeg.getvalue())
        session.last_frame = pixels
        await ws.send_json(session.status())

    async def generate() -> None:
        period = 1.0 / shared.config.fps
        while session.running and not ws.closed:
            start = time.perf_counter()
            try:
                await send_frame(await run_model(session.step))
            except ConnectionResetError:  # the tab went away mid-frame
                return
            elapsed = time.perf_counter() - start
            await asyncio.sleep(max(0.0, period - elapsed))
            session.fps = 0.8 * session.fps + 0.2 / max(time.perf_counter() - start, 1e-6)

    episodes = len(shared.store) if shared.store is not None else 0
    hello = {"type": "hello", "action_dim": shared.action_dim, "action_names": shared.action_names}
    hello |= {"episodes": episodes, "agent": shared.config.agent is not None}
    await ws.send_json(hello | {"fps_target": shared.config.fps})
    await send_frame(await run_model(session.reset, 0 if episodes else None))  # first picture
    if shared.config.agent is not None:
        session.policy = await run_model(AgentPolicy, shared.config.agent, 1, None, shared.device)
    task = None
    async for msg in ws:
        if msg.type != WSMsgType.TEXT:
            if msg.type == WSMsgType.BINARY:
                await ws.send_json({"type": "error", "message": "send JSON text, not binary"})
            continue
        try:
            message = parse_message(msg.data, shared.action_dim, episodes)
            if message["type"] == "agent" and session.policy is None:
                raise BadMessage("no agent: start the server with --agent RUN to let one drive")
        except BadMessage as error:
            await ws.send_json({"type": "error", "message": str(error)})
            continue
        kind = message["type"]
        if kind == "reset":
            await send_frame(await run_model(session.reset, message["episode"]))
            continue
        if kind == "step" and not session.running:
            await send_frame(await run_model(session.step))
            continue
        if kind == "action":
            session.action = torch.tensor([message["action"]])
        elif kind == "agent":
            session.agent = message["enabled"]
        elif kind == "run":
            session.running = message["running"]
            if session.running and (task is None or task.done()):
                task = asyncio.create_task(generate())
        await ws.send_json(session.status())  # the page shows what changed
    session.running = False
    if task is not None:
        await task


def make_app(shared: Shared) -> web.Application:
    app = web.Application()
    app[SHARED] = shared
    app.add_routes([web.get("/", index), web.get("/status", status), web.get("/ws", websocket)])
    return app


def serve(config: PlayConfig) -> None:
    loopback = config.host in ("127.0.0.1", "localhost", "::1")
    shared = build_shared(config)
    url_host = config.host if ":" not in config.host else f"[{config.host}]"
    runner = web.AppRunner(make_app(shared))

    async def main():
        await runner.setup()
        await web.TCPSite(runner, config.host, config.port).start()
        port = runner.addresses[0][1]  # the real one when --port 0 asked for any free port
        note = "" if loopback else "  (listening beyond this machine: anyone who can reach it)"
        print(f"nanodreamer play: http://{url_host}:{port}/{note}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a user stops it
        asyncio.run(main())
