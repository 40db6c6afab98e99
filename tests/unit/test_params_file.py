"""params.yaml is the single source of truth (issue 15 items 2 and 3).

Rule: params.yaml holds every key of every section, and the defaults written in chatforge.params equal
the file's values, so a section built in code (tests, the library used directly) and the default build
agree, and README's defaults are the file's. `dvc exp run -S` values keep their meaning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from chatforge.params import (
    SECTIONS,
    ParamsError,
    Section,
    SplitParams,
    TrainParams,
    load_all,
    validate_section,
)

ROOT = Path(__file__).resolve().parents[2]
FILE = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))


def _absent(model: type[BaseModel], raw: dict[str, Any], path: str) -> list[str]:
    """Keys of `model` (and of its nested sections) that `raw` does not write."""
    out: list[str] = []
    for name, field in model.model_fields.items():
        if name not in raw:
            out.append(f"{path}.{name}")
            continue
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, Section) and isinstance(raw[name], dict):
            out += _absent(sub, raw[name], f"{path}.{name}")
    return out


def _differences(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{path}.{k}")]
    return [] if a == b else [f"{path}: code default {a!r}, params.yaml {b!r}"]


def test_params_yaml_writes_every_key():
    absent = [key for name, model in SECTIONS.items() for key in _absent(model, FILE.get(name) or {}, name)]
    assert not absent, f"params.yaml lacks keys (add them with a comment): {absent}"


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_code_defaults_equal_params_yaml(name):
    model = SECTIONS[name]
    raw = FILE.get(name) or {}
    from_file = validate_section(name, raw, model).model_dump()
    required = {k: raw[k] for k, f in model.model_fields.items() if f.is_required()}
    from_code = model.model_validate(required).model_dump()
    assert not _differences(from_code, from_file, name), "\n".join(_differences(from_code, from_file, name))


def test_dvc_exp_run_numbers_are_text_for_text_keys():
    # `dvc exp run -S split.salt=2024` writes an integer into params.yaml
    assert validate_section("split", {"salt": 2024}, SplitParams).salt == "2024"
    assert validate_section("split", {"salt": 1.5}, SplitParams).salt == "1.5"
    # numbers written as text still become numbers (`-S train.lr=1e-07` reads back as a string)
    assert validate_section("train", {"lr": "1e-04"}, TrainParams).lr == 1e-04


def test_a_value_that_still_fails_names_key_value_allowed_and_quoting():
    with pytest.raises(ParamsError) as err:
        validate_section("model", {"family": 12}, SECTIONS["model"])
    assert str(err.value).splitlines()[1] == (
        "  model.family = 12: Input should be 'causal_lm' or 'classifier'. On the command line, quote text so "
        "YAML keeps it as written: dvc exp run -S 'model.family=\"<text>\"'."
    )
    with pytest.raises(ParamsError) as err:
        validate_section("split", {"val_fraction": "a tenth"}, SplitParams)
    assert str(err.value).splitlines()[1] == (
        "  split.val_fraction = 'a tenth': Input should be a valid number, unable to parse string as a number. "
        "On the command line write it bare: dvc exp run -S split.val_fraction=<value>."
    )


def test_a_long_bad_value_is_cut_in_the_message():
    with pytest.raises(ParamsError) as err:
        validate_section("split", {"val_fraction": "x" * 100_000}, SplitParams)
    assert len(str(err.value)) < 400


def test_the_shipped_file_validates():
    assert set(load_all(ROOT / "params.yaml")) == set(SECTIONS)
