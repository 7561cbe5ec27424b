"""Write docs/multi_car_racing.gif: a 2-car random race, both cars' views side by side.

python docs/multi_car_gif.py
"""

from nanodreamer import envs
from nanodreamer.data import RandomPolicy
from nanodreamer.eval.agent import run_episodes

if __name__ == "__main__":
    low, high = envs.RANDOM_ACTION_RANGE["multi-car-racing"]
    policy = RandomPolicy(2, 2, seed=0, low=low, high=high)
    options = {"num_cars": 2, "max_episode_steps": 250}
    gif = "docs/multi_car_racing.gif"
    returns, _ = run_episodes("multi-car-racing", options, policy, [0], video=gif)
    print(f"returns per car: {returns[0].round(1).tolist()}")
