"""The serve section of params.yaml: the shipped one validates, bad values name key and range."""

from __future__ import annotations

import pytest

from chatforge.params import ParamsError, ServeParams, load_section, validate_section

VARIANTS = [{"name": "a", "model": "models/a"}]


def test_shipped_params_validate(repo_root):
    serve = load_section("serve", path=repo_root / "params.yaml")
    assert isinstance(serve, ServeParams)
    assert serve.confidence_threshold == 0.7
    assert all(0.7 <= p.temperature <= 1.2 for p in serve.personas.values())


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"personas": {"hot": {"temperature": 1.5}}}, "serve.personas.hot.temperature = 1.5"),
        ({"confidence_threshold": "1.5"}, "serve.confidence_threshold = '1.5'"),
        ({"variants": VARIANTS * 2}, "variant names must be unique; repeated: ['a']"),
        ({"fallback": {"zh": "x"}}, "fallback needs both 'zh' and 'en'"),
        ({"filter": {"mode": "drop"}}, "serve.filter.mode = 'drop'"),
        (
            {"limits": {"max_tokens": 8, "default_max_tokens": 9}},
            "default_max_tokens (9) must not exceed max_tokens (8)",
        ),
        ({"cache": {"ttl": 3}}, "serve.cache.ttl: unknown key"),
        ({"variants": []}, "serve.variants"),
    ],
)
def test_bad_values_are_named(raw, needle):
    with pytest.raises(ParamsError) as err:
        validate_section("serve", {"variants": VARIANTS} | raw, ServeParams)
    assert needle in str(err.value)


def test_numeric_strings_are_coerced():
    p = validate_section(
        "serve",
        {"variants": VARIANTS, "confidence_threshold": "0.5", "rate_limit": {"burst": "3"}},
        ServeParams,
    )
    assert (p.confidence_threshold, p.rate_limit.burst) == (0.5, 3)
