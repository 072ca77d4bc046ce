"""Errors that mean bad input or state rather than a bug: the CLI prints them as one line."""

from .feed import FeedError
from .index import IndexUnavailable
from .indexer import IndexBusy
from .models import ModelError

UserError = (FeedError, IndexUnavailable, IndexBusy, ModelError, ValueError)
