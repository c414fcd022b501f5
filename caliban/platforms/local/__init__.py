"""Containers on this machine's Docker engine, each job pinned to its own GPUs."""
