"""Shared pytest setup for every test folder. Keep it generic: each folder adds its own conftest."""

from __future__ import annotations

import os

try:
    from hypothesis import settings as hypothesis_settings
except ImportError:  # hypothesis is a test extra; folders that do not use it need not have it
    hypothesis_settings = None

if hypothesis_settings is not None:
    # Modest by default so `make test` stays fast; HYPOTHESIS_PROFILE=thorough digs deeper.
    hypothesis_settings.register_profile("default", max_examples=300, deadline=None)
    hypothesis_settings.register_profile("thorough", max_examples=5000, deadline=None)
    hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
