"""Bring your own model: an nn.Module plus an input spec is served like the zoo models."""

import pytest
import torch

from recsched.config import EngineConfig
from recsched.engine import Engine
from recsched.models.base import InputError, validate_inputs
from recsched.models.registry import load_model, register_model
from recsched.types import Query


def test_factory_path_loads_and_engine_serves_it():
    ad = load_model("tests.byo_model:make_deepfm")
    assert ad.name == "deepfm" and ad.info["params"] > 0
    x = ad.make_inputs(37, 1)
    assert validate_inputs(ad.inputs, x) == 37
    with Engine(ad, EngineConfig(request="split", batch_size=8)) as eng:
        got = eng.submit(Query(0, "deepfm", 37), x).result(timeout=10)
    with torch.inference_mode():
        torch.testing.assert_close(got, ad.module(x))


def test_register_model_and_validation_names_inputs():
    from tests.byo_model import make_deepfm

    register_model("my-deepfm", make_deepfm)
    ad = load_model("my-deepfm")
    bad = ad.make_inputs(2, 0)
    bad["ids"][0, 0] = 50
    with pytest.raises(InputError, match="ids"):
        validate_inputs(ad.inputs, bad)
    with pytest.raises(ValueError, match="built-in"):
        register_model("rmc1", make_deepfm)


def test_bad_factory_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot load model factory"):
        load_model("tests.byo_model:nope")
