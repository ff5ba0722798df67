import pytest
import yaml

from pneumonia.config import ParamsError, load_params, parse_params
from tests.conftest import REPO_ROOT


def repo_params() -> dict:
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def test_repository_params_load_into_typed_sections():
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.base.labels == ("NORMAL", "PNEUMONIA")
    assert isinstance(params.train.epochs, int)
    assert params.train.augment.enabled in (True, False)


def test_unknown_key_is_named():
    raw = repo_params()
    raw["train"]["epoch"] = 3  # typo of "epochs"
    with pytest.raises(ParamsError, match=r"unknown key 'train\.epoch'"):
        parse_params(raw)


def test_missing_key_is_named():
    raw = repo_params()
    del raw["preprocess"]["image_size"]
    with pytest.raises(ParamsError, match=r"missing key 'preprocess\.image_size'"):
        parse_params(raw)


def test_nested_unknown_key_and_bad_choice_are_reported_together():
    raw = repo_params()
    raw["train"]["augment"]["flip"] = True
    raw["evaluate"]["threshold_policy"] = "best_on_test"
    with pytest.raises(ParamsError) as error:
        parse_params(raw)
    assert "unknown key 'train.augment.flip'" in str(error.value)
    assert "evaluate.threshold_policy" in str(error.value)


def test_params_are_frozen():
    params = load_params(REPO_ROOT / "params.yaml")
    with pytest.raises(Exception, match="frozen"):
        params.train.epochs = 1  # type: ignore[misc]
