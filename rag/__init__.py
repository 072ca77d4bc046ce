"""Offline question answering over a blog feed: feed -> posts -> chunks -> index -> retrieve -> answer."""

__version__ = "0.1.0"
