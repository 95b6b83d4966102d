import os
import pathlib
import tempfile

import pytest

# Every test run gets its own cache, so tests neither read nor spoil the user's .cache/.
os.environ["UBT_CACHE_DIR"] = tempfile.mkdtemp(prefix="ubt-test-cache-")

import ubtlib  # noqa: E402  (after the cache location is set)

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def smoke():
    return ubtlib.configure("smoke")


@pytest.fixture(scope="session")
def smoke_world(smoke):
    from ubtlib import pipeline

    return pipeline.world(smoke, progress=False)
