import os

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never download; code paths that would, fail fast

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """tiny-gpt2 materialised in a fresh cache (a second or two)."""
    from iama.models import resolve_model

    return resolve_model("tiny-gpt2", cache_dir=tmp_path_factory.mktemp("iama_cache"))


@pytest.fixture(scope="session")
def smollm2_dir():
    """smollm2-135m-instruct in the default cache (IAMA_CACHE or ~/.cache/iama): converted on first use,
    about 30 s on a CPU, then reused by later sessions."""
    from iama.models import resolve_model

    return resolve_model("smollm2-135m-instruct")


# prompts and a tiny-gpt2 backend for the sampling tests (tests/test_backends.py, tests/test_pools.py)
PROMPTS = ["the day is good", "tell me a story", "what is time ?", "say something happy", "i think so",
           "we like people", "go see the day", "very bad time"]


@pytest.fixture(scope="session")
def tiny():
    """tiny-gpt2's (tokenizer, model), loaded once."""
    from iama.models import load_model

    return load_model("tiny-gpt2")


@pytest.fixture(scope="session")
def backend(tiny):
    from iama.backends import HFBackend

    return HFBackend(*tiny, batch_size=64)
