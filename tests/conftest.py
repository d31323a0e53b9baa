"""Shared fixtures. Integration tests start the real local stack once per session.

Hypothesis runs derandomized (a fixed seed) when ``CI`` is set, so a CI run is
repeatable; a developer's run keeps exploring new examples.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
