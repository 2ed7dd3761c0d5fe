"""Shared fixtures: tiny random models (fast) and the real pretrained encoder."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
HH_RLHF = os.path.join(SHARED, "data", "hh-rlhf", "harmless-base-test.jsonl.gz")


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module: two threads on a shared 2-core machine trained ~6x
    slower (FINDINGS). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_bridge(tmp_path_factory):
    """Random 2-layer GPT-2 (d=32) wrapped with TransformerBridge.boot_transformers."""
    from mechunlearn.models import tiny_gpt2

    return tiny_gpt2(n_layer=2, d_model=32, folder=tmp_path_factory.mktemp("tiny_gpt2"))


@pytest.fixture(scope="session")
def native_bridge():
    """Random TransformerLens-native model from TransformerBridge.boot_native."""
    from mechunlearn.models import tiny_native

    return tiny_native()


@pytest.fixture(scope="session")
def minilm():
    """The real pretrained all-MiniLM-L6-v2 (BERT, 6 layers, d=384), offline."""
    from mechunlearn.models import load_minilm

    return load_minilm()


@pytest.fixture(scope="session")
def hh_rlhf_path():
    """Path to the shared hh-rlhf sample (tests only; the library takes a path)."""
    if not os.path.exists(HH_RLHF):
        pytest.skip("shared hh-rlhf sample not present")
    return HH_RLHF


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The toy world's ``tiny`` preset (trained once per session into a temporary cache)."""
    from mechunlearn import toyworld

    return toyworld.load("tiny", cache_dir=tmp_path_factory.mktemp("toyworld"), progress=False)
