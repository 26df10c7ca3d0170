"""The tiny release in the official formats that the checkpoint tests load (one per module)."""
import pytest

from kv_core.tiny import write_tiny_release


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_tiny_release(tmp_path_factory.mktemp("tiny"), seed=1)
