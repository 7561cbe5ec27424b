"""The whole pipeline on the tiny dot environment, from pixels to a policy that steers:
collect random data, train the tokenizer, the dynamics model, the agent (BC + reward) and the
policy in imagination, then drive the real environment. About 10 minutes on one CPU core."""

import json

import torch

from nanodreamer.cli import main
from nanodreamer.data import collect

# Return of a 50-step episode: random about -97, heading straight for the target about -1. The
# imagination-trained policy must close at least a tenth of that gap (seen: -81 against -101).
MARGIN = 10.0


def cli(command: str) -> None:
    """A `nanodreamer` command line in this process; training at the preset's batch size."""
    words = command.split()
    if words[0] == "train":
        words += ["--workers", "0", "--no-tensorboard", "--eval-every", "100000"]
    main(words)


def test_imagination_policy_beats_random_on_dot(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core per test worker: the run costs the same everywhere
    try:
        data, run = tmp_path / "data", tmp_path
        collect("dot", data, 400, seed=0, progress=False)
        cli(f"train tokenizer --data {data} --out {run}/tok --steps 1500 --seq-len 4")
        cli(
            f"train dynamics --data {data} --tokenizer {run}/tok --out {run}/dyn --steps 6000 "
            "--seq-len 4 --long-seq-len 0 --lr 2e-3 --independent-frac 0"
        )
        cli(
            f"train agent --data {data} --world-model {run}/dyn --out {run}/agent --steps 1500 "
            "--seq-len 8 --lr 1e-3"
        )
        cli(
            f"train imagination --run {run}/agent --out {run}/img --steps 600 --lr 1e-3 "
            "--horizon 8 --gamma 0.9"
        )
        capsys.readouterr()
        cli(f"eval agent --run {run}/img --env dot --episodes 64 --json")
        results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    finally:
        torch.set_num_threads(threads)
    print(results)
    assert results["return_mean"] > results["random_return_mean"] + MARGIN, results
