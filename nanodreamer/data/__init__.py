"""Data: the episode store, collection, and the training-window sampler."""

from nanodreamer.data.collect import RandomPolicy, collect
from nanodreamer.data.sampler import WindowDataset, split_episodes, window_loader
from nanodreamer.data.store import KEYS, CorruptEpisodeError, EpisodeStore, summarize, verify
