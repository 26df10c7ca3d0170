"""The tiny pipeline and text condition of the pipeline tests (one per module;
tests/support/tiny_pipeline.py builds them)."""
import pytest

from tiny_pipeline import tiny_condition, tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def cond():
    return tiny_condition()
