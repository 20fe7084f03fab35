"""A run folder belongs to one set of settings; a rerun with others is rejected with the difference named."""

from __future__ import annotations

import pytest

from mdskit.errors import MdskitError
from mdskit.runs import RunSettings, _claim_folder


def test_same_settings_resume(tmp_path):
    settings = RunSettings(method="sim4seg", out=tmp_path / "run", ttss="best-of-n")
    _claim_folder(settings.out, "abc", settings, {"num_paths": 4, "score": "agreement"})
    _claim_folder(settings.out, "abc", settings, {"num_paths": 4, "score": "agreement"})
    assert (settings.out / "run.json").is_file()


def test_other_strategy_parameter_is_named(tmp_path):
    settings = RunSettings(method="sim4seg", out=tmp_path / "run", ttss="best-of-n")
    _claim_folder(settings.out, "abc", settings, {"num_paths": 4, "score": "agreement"})
    with pytest.raises(MdskitError) as caught:
        _claim_folder(settings.out, "def", settings, {"num_paths": 4, "score": "logprob"})
    assert "with other settings (strategy score differs)" in str(caught.value)
    assert "pass another --out or delete the folder" in str(caught.value)


def test_other_seed_is_named(tmp_path):
    first = RunSettings(method="sim4seg", out=tmp_path / "run")
    _claim_folder(first.out, "abc", first, {})
    second = RunSettings(method="sim4seg", out=tmp_path / "run", seed=3)
    with pytest.raises(MdskitError, match=r"other settings \(seed differs\)"):
        _claim_folder(second.out, "def", second, {})


def test_other_method_definition_is_named(tmp_path):
    settings = RunSettings(method="lisa", out=tmp_path / "run")
    _claim_folder(settings.out, "abc", settings, method={"finetune": {"lora": {"rank": 4}}},
                  resumable=("train_steps",))
    longer = RunSettings(method="lisa", out=tmp_path / "run", train_steps=3)
    with pytest.raises(MdskitError) as caught:
        _claim_folder(longer.out, "def", longer, method={"finetune": {"lora": {"rank": 8}}},
                      resumable=("train_steps",))
    assert "with other settings (the method definition differs)" in str(caught.value)
