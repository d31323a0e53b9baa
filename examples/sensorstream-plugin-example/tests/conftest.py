"""The project's integration fixtures (the real stack, isolated app settings, workers),
and the example's source on ``sys.path`` for the tests of its plain logic."""

import sys
from pathlib import Path

from tests.integration.conftest import (  # noqa: F401
    app_env,
    bootstrap,
    make_worker,
    stack,
    stack_env,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
