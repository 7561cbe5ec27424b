"""MultiCarRacing on current Gymnasium: N cars race on one CarRacing track, one 96x96 view each.

The seed's MultiCarRacing no longer installs, so this rebuilds it on CarRacing-v3's track,
car dynamics and drawing code (with one car it is CarRacing-v3 exactly). Observation
(N, 96, 96, 3) uint8, one view per car; action (N, 2) (steer, throttle) in [-1, 1]; reward
(N,): +1000/len(track) per tile a car touches first, -0.1 per frame, -100 off the playfield.
Cars collide; the episode ends for all when any car finishes a lap or leaves the playfield
(`make` adds the 1000-frame time limit).
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pygame
from Box2D.b2 import contactListener
from gymnasium.envs.box2d.car_dynamics import Car
from gymnasium.envs.box2d.car_racing import (
    FPS,
    PLAYFIELD,
    SCALE,
    STATE_H,
    STATE_W,
    TRACK_WIDTH,
    WINDOW_H,
    WINDOW_W,
    ZOOM,
    CarRacing,
)

from nanodreamer.errors import UserError

MAX_CARS = 8
# hull colours: car 0 is CarRacing's red, the others are told apart at a glance
CAR_COLORS = [(0.8, 0.0, 0.0), (0.0, 0.25, 0.8), (0.9, 0.75, 0.0), (0.55, 0.0, 0.7),
              (0.0, 0.6, 0.6), (1.0, 0.5, 0.0), (0.2, 0.2, 0.2), (0.9, 0.9, 0.9)]  # fmt: skip


class TileContacts(contactListener):
    """Tracks which tiles each wheel touches (road friction) and which tiles each car visited."""

    def __init__(self, env: MultiCarRacing):
        super().__init__()
        self.env = env

    def BeginContact(self, contact):
        if wheel_and_tile := self._contact(contact):
            wheel_and_tile[0].tiles.add(wheel_and_tile[1])
            self.env.visit(wheel_and_tile[0].car_id, wheel_and_tile[1])

    def EndContact(self, contact):
        if wheel_and_tile := self._contact(contact):
            wheel_and_tile[0].tiles.discard(wheel_and_tile[1])

    def _contact(self, contact) -> tuple | None:
        """(wheel, tile) of a contact between them; a touched tile loses its stripe."""
        bodies = (contact.fixtureA.body.userData, contact.fixtureB.body.userData)
        tile = next((b for b in bodies if hasattr(b, "road_friction")), None)
        wheel = next((b for b in bodies if hasattr(b, "car_id")), None)
        if tile is not None:
            tile.color[:] = self.env.road_color  # as CarRacing
        return (wheel, tile) if tile is not None and wheel is not None else None


class MultiCarRacing(CarRacing):
    metadata = {"render_modes": ["rgb_array"], "render_fps": FPS}

    def __init__(self, num_cars: int = 2, lap_complete_percent: float = 0.95):
        if not isinstance(num_cars, int) or not 1 <= num_cars <= MAX_CARS:
            raise UserError(f"num_cars must be an integer in 1..{MAX_CARS}, got {num_cars!r}")
        super().__init__(render_mode="rgb_array", lap_complete_percent=lap_complete_percent)
        self.num_cars = num_cars
        self.cars: list[Car] = []
        self.observation_space = gym.spaces.Box(0, 255, (num_cars, STATE_H, STATE_W, 3), np.uint8)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (num_cars, 2), np.float32)
        self.font = None

    # episode -----------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        gym.Env.reset(self, seed=seed)
        self._destroy()
        self.world.contactListener_keepref = TileContacts(self)
        self.world.contactListener = self.world.contactListener_keepref
        n = self.num_cars
        self.reward, self.prev_reward = np.zeros(n), np.zeros(n)
        self.tiles_visited, self.lap_done = np.zeros(n, np.int64), np.zeros(n, bool)
        self.t, self.road_poly = 0.0, []
        while not self._create_track():  # the generator fails now and then: draw again
            continue
        for tile in self.road:
            tile.visited = np.zeros(n, bool)
        self.cars = [self._create_car(i) for i in range(n)]
        return self.step(None)[0], {}

    def _create_car(self, i: int) -> Car:
        """Two cars abreast per row, rows two tiles apart behind the start line."""
        row, lane = divmod(i, 2)
        lanes = min(self.num_cars, 2)
        _, beta, x, y = self.track[-2 * row]
        offset = (lane - (lanes - 1) / 2) * TRACK_WIDTH  # one car alone sits on the centre line
        car = Car(self.world, beta, x + offset * math.cos(beta), y + offset * math.sin(beta))
        car.hull.color = CAR_COLORS[i]
        for wheel in car.wheels:
            wheel.car_id = i
        return car

    def visit(self, car: int, tile) -> None:
        if tile.visited[car]:
            return
        tile.visited[car] = True
        self.reward[car] += 1000.0 / len(self.track)
        self.tiles_visited[car] += 1
        if tile.idx == 0 and self.tiles_visited[car] / len(self.track) > self.lap_complete_percent:
            self.lap_done[car] = True

    def _destroy(self) -> None:
        for tile in self.road or []:
            self.world.DestroyBody(tile)
        self.road = []
        for car in self.cars:
            car.destroy()
        self.cars = []

    def step(self, action):
        if action is not None:
            action = np.asarray(action, np.float64)
            if action.shape != self.action_space.shape:
                raise UserError(
                    f"multi-car-racing with {self.num_cars} cars takes actions of shape "
                    f"{self.action_space.shape} (steer, throttle per car), got {action.shape}"
                )
            for car, (steer, throttle) in zip(self.cars, np.clip(action, -1.0, 1.0), strict=True):
                car.steer(-steer)
                car.gas(max(throttle, 0.0))
                car.brake(max(-throttle, 0.0))
        for car in self.cars:
            car.step(1.0 / FPS)
        self.world.Step(1.0 / FPS, 6 * 30, 2 * 30)
        self.t += 1.0 / FPS
        obs = np.stack([self._view(i) for i in range(self.num_cars)])
        step_reward = np.zeros(self.num_cars)
        terminated, info = False, {}
        if action is not None:  # reset() renders its first frame through step(None)
            self.reward -= 0.1
            for car in self.cars:
                car.fuel_spent = 0.0
            step_reward = self.reward - self.prev_reward
            self.prev_reward = self.reward.copy()
            off = np.array([max(map(abs, car.hull.position)) > PLAYFIELD for car in self.cars])
            step_reward[off] = -100.0
            lap = self.lap_done | (self.tiles_visited == len(self.track))
            terminated = bool(lap.any() or off.any())
            info = {"lap_finished": lap, "off_playfield": off}
        return obs, step_reward.astype(np.float32), terminated, False, info

    # pictures ----------------------------------------------------------------------------------
    def _view(self, i: int) -> np.ndarray:
        """Car i's 96x96 view, drawn the way CarRacing draws its single car's view."""
        pygame.font.init()
        self.font = self.font or pygame.font.Font(pygame.font.get_default_font(), 42)
        me = self.cars[i]
        self.surf = pygame.Surface((WINDOW_W, WINDOW_H))
        angle = -me.hull.angle
        zoom = 0.1 * SCALE * max(1 - self.t, 0) + ZOOM * SCALE * min(self.t, 1)
        scroll = pygame.math.Vector2(-me.hull.position[0] * zoom, -me.hull.position[1] * zoom)
        scroll = scroll.rotate_rad(angle)
        trans = (WINDOW_W / 2 + scroll[0], WINDOW_H / 4 + scroll[1])
        self._render_road(zoom, trans, angle)
        for car in [c for c in self.cars if c is not me] + [me]:  # own car on top
            car.draw(self.surf, zoom, trans, angle, False)
        self.surf = pygame.transform.flip(self.surf, False, True)
        self.car = me  # CarRacing's indicator bar reads `self.car`
        self._render_indicators(WINDOW_W, WINDOW_H)
        text = self.font.render(f"{self.reward[i]:04.0f}", True, (255, 255, 255), (0, 0, 0))
        rect = text.get_rect()
        rect.center = (60, WINDOW_H - WINDOW_H * 2.5 / 40.0)
        self.surf.blit(text, rect)
        return self._create_image_array(self.surf, (STATE_W, STATE_H))

    def render(self) -> np.ndarray:
        """All cars' current views side by side: (96, N * 96, 3)."""
        return np.concatenate([self._view(i) for i in range(self.num_cars)], axis=1)
