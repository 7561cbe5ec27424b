import json
import os
import warnings

import numpy as np
import pytest
from conftest import make_store, synthetic_episode

from nanodreamer.data import KEYS, CorruptEpisodeError, EpisodeStore, summarize, verify
from nanodreamer.errors import UserError


def test_round_trip_exact_keys(tmp_path):
    store = make_store(tmp_path / "d", [10, 7])
    assert len(store) == 2 and store.frames == 17
    first = store[0]
    assert set(first) == set(KEYS)
    expected = synthetic_episode(10, 0)
    for key in KEYS:
        np.testing.assert_array_equal(first[key], expected[key])
        assert first[key].dtype == expected[key].dtype
    assert [len(ep["reward"]) for ep in store] == [10, 7]
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["num_episodes"] == 2 and manifest["num_frames"] == 17
    assert manifest["format_version"] == 2 and manifest["obs_shape"] == [8, 8, 3]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda ep: ep["action"].__setitem__((3, 0), 1.5), r"actions must lie in \[-1, 1\]"),
        (lambda ep: ep.__setitem__("obs", ep["obs"].astype(np.float32)), "obs must be uint8"),
        (lambda ep: ep.__setitem__("obs", ep["obs"][:, :4]), "obs must be uint8 of shape"),
        (lambda ep: ep["action"].__setitem__((0, 1), 0.3), "index 0 must hold a zero action"),
        (lambda ep: ep.pop("is_terminal"), "exactly the keys"),
    ],
)
def test_bad_episodes_rejected(tmp_path, change, message):
    with EpisodeStore.create(tmp_path, env="synthetic", obs_shape=(8, 8, 3), action_dim=2) as s:
        episode = synthetic_episode(6, 0)
        change(episode)
        with pytest.raises(UserError, match=message):
            s.add(episode)
        assert len(s) == 0


def test_append_other_env_or_resolution_refused(tmp_path):
    make_store(tmp_path, [5])
    before = (tmp_path / "manifest.json").read_text()
    with pytest.raises(UserError, match="env='synthetic'"):
        EpisodeStore.create(tmp_path, env="car-racing", obs_shape=(8, 8, 3), action_dim=2)
    with pytest.raises(UserError, match="obs_shape"):
        EpisodeStore.create(tmp_path, env="synthetic", obs_shape=(16, 16, 3), action_dim=2)
    assert (tmp_path / "manifest.json").read_text() == before
    assert len(EpisodeStore(tmp_path)) == 1


def test_one_writer_at_a_time(tmp_path):
    spec = {"env": "synthetic", "obs_shape": (8, 8, 3), "action_dim": 2}
    with EpisodeStore.create(tmp_path, **spec), pytest.raises(UserError, match="another process"):
        EpisodeStore.create(tmp_path, **spec)


def test_not_a_dataset(tmp_path):
    with pytest.raises(UserError, match="not a dataset"):
        EpisodeStore(tmp_path)


def test_truncated_file_skipped_by_name_and_repaired(tmp_path):
    make_store(tmp_path, [10, 12, 9])
    victim = tmp_path / "episodes" / "ep_000001.npz"
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.warns(UserWarning, match="ep_000001.npz"):
        store = EpisodeStore(tmp_path)
    assert len(store) == 2 and store.lengths.tolist() == [10, 9]
    problems = verify(tmp_path, repair=True)
    assert len(problems) == 1 and "ep_000001.npz" in problems[0]
    assert (tmp_path / "corrupt" / "ep_000001.npz").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(EpisodeStore(tmp_path)) == 2


def test_corrupt_content_same_size_detected(tmp_path):
    make_store(tmp_path, [30, 12])
    victim = tmp_path / "episodes" / "ep_000000.npz"
    data = bytearray(victim.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    victim.write_bytes(bytes(data))
    store = EpisodeStore(tmp_path)  # same size: only a full read can tell
    with pytest.raises(CorruptEpisodeError, match=r"ep_000000\.npz is truncated or corrupt"):
        store[0]
    assert len(verify(tmp_path)) == 1


def test_orphan_episode_adopted(tmp_path):
    """A writer killed between the episode rename and the manifest update loses nothing."""
    make_store(tmp_path, [10, 11])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["episodes"] = manifest["episodes"][:1]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    store = EpisodeStore(tmp_path)
    assert store.lengths.tolist() == [10, 11]


def test_summary(synthetic_store):
    info = summarize(synthetic_store)
    assert info["episodes"] == 6 and info["frames"] == 40 + 25 + 60 + 5 + 33 + 47
    assert info["episode_length"]["max"] == 60 and len(info["action"]["mean"]) == 2
    assert info["bytes_on_disk"] > 0


def test_atomic_write_replaces_whole_file_with_normal_permissions(tmp_path):
    from nanodreamer.io import atomic_write, write_json

    path = tmp_path / "a.json"
    write_json(path, {"v": 1})
    with pytest.raises(RuntimeError):  # a write that dies leaves the old file and no debris

        def broken(tmp):
            tmp.write_text("{")
            raise RuntimeError("killed")

        atomic_write(path, broken)
    assert path.read_text().strip().replace("\n", "").replace(" ", "") == '{"v":1}'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # readable by others, like open()


def action_free(episode: dict) -> dict:
    return episode | {"action": np.zeros_like(episode["action"]), "reward": 0 * episode["reward"]}


def test_action_free_episodes_marked_in_the_manifest(tmp_path):
    with EpisodeStore.create(tmp_path, env="synthetic", obs_shape=(8, 8, 3), action_dim=2) as s:
        s.add(synthetic_episode(6, 0))
        s.add(action_free(synthetic_episode(5, 1)), actions=False)
        with pytest.raises(UserError, match="action-free episode must hold zero actions"):
            s.add(synthetic_episode(5, 2), actions=False)
    store = EpisodeStore(tmp_path)
    assert store.labelled.tolist() == [True, False]
    assert [e["actions"] for e in store.manifest["episodes"]] == [True, False]
    assert summarize(store)["labelled_episodes"] == 1


def test_reads_and_upgrades_a_format_1_dataset(tmp_path):
    """A dataset written before the actions marker: every episode reads as labelled, and the
    first append rewrites the manifest in the current format, keeping every episode."""
    make_store(tmp_path, [6, 7])
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    for entry in manifest["episodes"]:
        del entry["actions"]
    path.write_text(json.dumps(manifest | {"format_version": 1}))
    store = EpisodeStore(tmp_path)
    assert store.labelled.tolist() == [True, True] and len(store) == 2
    np.testing.assert_array_equal(store[1]["obs"], synthetic_episode(7, 1)["obs"])
    with EpisodeStore.create(tmp_path, env="synthetic", obs_shape=(8, 8, 3), action_dim=2) as s:
        s.add(action_free(synthetic_episode(5, 2)), actions=False)
    manifest = json.loads(path.read_text())
    assert manifest["format_version"] == 2 and manifest["num_episodes"] == 3
    assert EpisodeStore(tmp_path).labelled.tolist() == [True, True, False]
    path.write_text(json.dumps(manifest | {"format_version": 99}))
    with pytest.raises(UserError, match="dataset format 99"):
        EpisodeStore(tmp_path)
