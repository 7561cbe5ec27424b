#!/usr/bin/env bash
# Does Boxing's world model see its actions and rewards better when one decision holds for
# two agent steps (8 frames, as car racing's action repeat 8) than for one (4 frames)?
# Same random-data budget in agent steps (50k), the same tokenizer, the same updates.
#   bash bench/experiments/boxing_decision_frames.sh TOKENIZER_RUN OUT REPEAT
# Results: bench/log/atari-recipe.md.
set -euo pipefail
tok=$1 out=$2 repeat=$3
export OMP_NUM_THREADS=1
nd=".venv/bin/nanodreamer"
mkdir -p "$out"
[ -f "$out/data/manifest.json" ] || $nd collect --env atari:Boxing --steps $((50000 / repeat)) \
  --action-repeat "$repeat" --workers 1 --seed 0 --out "$out/data"
[ -f "$out/dyn/model.safetensors" ] || $nd train dynamics --recipe atari --data "$out/data" \
  --tokenizer "$tok" --out "$out/dyn" --steps 2500 --workers 0 --no-tensorboard
$nd eval dynamics --run "$out/dyn" --data "$out/data" --json | tail -1 > "$out/dynamics.json"
[ -f "$out/agent/model.safetensors" ] || $nd train agent --recipe atari --data "$out/data" \
  --world-model "$out/dyn" --out "$out/agent" --steps 800 --workers 0 --no-tensorboard
.venv/bin/python - "$out" <<'PY' > "$out/reward.json"
import json, sys
from nanodreamer.data import EpisodeStore
from nanodreamer.eval.control import per_step_rewards
from nanodreamer.runs import load_agent, load_tokenizer
out = sys.argv[1]
model, info = load_agent(f"{out}/agent")
store = EpisodeStore(f"{out}/data")
r = per_step_rewards(model, load_tokenizer(info["tokenizer"]), store, episodes=3)
r["nonzero_reward_share"] = float(sum((store.load(i, ("reward",))["reward"] != 0).sum()
    for i in range(len(store))) / store.lengths.sum())
print(json.dumps(r))
PY
cat "$out/dynamics.json" "$out/reward.json"
