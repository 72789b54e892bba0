"""Server options: defaults, camelCase JSON, nested objects, problems reported with dotted paths."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from dg_lsp.config import CompletionOptions, RewriteOptions, ServerOptions, options_to_json, parse_options
from dg_lsp.engine.sampler import SamplerSettings


def test_defaults() -> None:
    options = ServerOptions()
    assert options.model is None
    assert (options.device, options.dtype, options.reuse_prompt_cache) == ("auto", "auto", True)
    assert options.completion == CompletionOptions()
    # Unset sampler fields (None) mean "the model's own" (its generation_config.json, else 16 steps).
    assert options.completion.max_steps is None and options.completion.entropy_bound is None
    assert options.completion.draft_interval_ms == 30 and options.prompt_format == "auto"
    assert options.completion.parse_check and options.completion.greedy and options.completion.enabled
    assert options.rewrite == RewriteOptions(max_steps=None, noise=0.5, greedy=True)
    assert options.completion.sampler() == SamplerSettings(max_steps=16, entropy_bound=0.1, greedy=True)
    assert options.rewrite.sampler(None).max_steps == 24


@pytest.mark.parametrize("raw", [None, {}])
def test_empty_input_gives_defaults_without_problems(raw: Any) -> None:
    assert parse_options(ServerOptions, raw) == (ServerOptions(), [])


def test_camel_case_keys() -> None:
    options, problems = parse_options(
        ServerOptions,
        {
            "model": "/models/code",
            "device": "cuda:1",
            "dtype": "bfloat16",
            "reusePromptCache": False,
            "completion": {"maxSteps": 8, "draftIntervalMs": 0, "parseCheck": False, "cacheSize": 0, "seed": -3},
        },
    )
    assert problems == []
    assert options.model == "/models/code"
    assert (options.device, options.dtype, options.reuse_prompt_cache) == ("cuda:1", "bfloat16", False)
    assert options.completion.max_steps == 8
    assert options.completion.draft_interval_ms == 0
    assert options.completion.parse_check is False
    assert options.completion.cache_size == 0
    assert options.completion.seed == -3
    # Untouched fields keep their defaults.
    assert options.completion.context_tokens == CompletionOptions().context_tokens
    assert options.rewrite == RewriteOptions()


def test_nested_objects_and_int_for_float() -> None:
    options, problems = parse_options(
        ServerOptions, {"completion": {"entropyBound": 1, "greedy": False}, "rewrite": {"noise": 0.25, "maxSteps": 4}}
    )
    assert problems == []
    assert options.completion.entropy_bound == 1.0 and isinstance(options.completion.entropy_bound, float)
    assert options.completion.greedy is False
    assert options.rewrite == RewriteOptions(max_steps=4, noise=0.25, greedy=True)


@pytest.mark.parametrize(
    ("raw", "path", "field"),
    [
        ({"completion": {"maxSteps": "8"}}, "completion.maxSteps", ("completion", "max_steps")),
        ({"completion": {"maxSteps": True}}, "completion.maxSteps", ("completion", "max_steps")),
        ({"completion": {"maxSteps": 8.5}}, "completion.maxSteps", ("completion", "max_steps")),
        ({"completion": {"enabled": "yes"}}, "completion.enabled", ("completion", "enabled")),
        ({"completion": {"entropyBound": False}}, "completion.entropyBound", ("completion", "entropy_bound")),
        ({"rewrite": {"noise": "0.5"}}, "rewrite.noise", ("rewrite", "noise")),
        ({"model": 3}, "model", ("model",)),
        ({"device": None}, "device", ("device",)),
        ({"reusePromptCache": 1}, "reusePromptCache", ("reuse_prompt_cache",)),
    ],
)
def test_wrong_types_are_reported_and_defaulted(raw: dict[str, Any], path: str, field: tuple[str, ...]) -> None:
    options, problems = parse_options(ServerOptions, raw)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: ")
    assert "not a valid" in problems[0]
    assert _get(options, field) == _get(ServerOptions(), field)


@pytest.mark.parametrize(
    ("raw", "path", "field"),
    [
        ({"completion": {"maxSteps": 0}}, "completion.maxSteps", ("completion", "max_steps")),
        ({"completion": {"maxSteps": 257}}, "completion.maxSteps", ("completion", "max_steps")),
        ({"completion": {"contextTokens": 8}}, "completion.contextTokens", ("completion", "context_tokens")),
        ({"completion": {"draftIntervalMs": -1}}, "completion.draftIntervalMs", ("completion", "draft_interval_ms")),
        ({"completion": {"entropyBound": 0}}, "completion.entropyBound", ("completion", "entropy_bound")),
        ({"completion": {"entropyBound": math.nan}}, "completion.entropyBound", ("completion", "entropy_bound")),
        ({"rewrite": {"noise": 1.5}}, "rewrite.noise", ("rewrite", "noise")),
        ({"rewrite": {"maxSteps": -2}}, "rewrite.maxSteps", ("rewrite", "max_steps")),
        ({"device": "tpu"}, "device", ("device",)),
        ({"dtype": "int8"}, "dtype", ("dtype",)),
    ],
)
def test_out_of_range_values_are_reported_and_defaulted(raw: dict[str, Any], path: str, field: tuple[str, ...]) -> None:
    options, problems = parse_options(ServerOptions, raw)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: ")
    assert "out of range" in problems[0]
    assert _get(options, field) == _get(ServerOptions(), field)


def test_range_bounds_are_inclusive() -> None:
    options, problems = parse_options(
        ServerOptions, {"completion": {"maxSteps": 256, "draftIntervalMs": 0}, "rewrite": {"noise": 0, "maxSteps": 1}}
    )
    assert problems == []
    assert (options.completion.max_steps, options.completion.draft_interval_ms) == (256, 0)
    assert (options.rewrite.noise, options.rewrite.max_steps) == (0.0, 1)


def test_unknown_keys_are_reported_with_their_path() -> None:
    options, problems = parse_options(
        ServerOptions, {"bogus": 1, "completion": {"nope": 2, "maxSteps": 5}, "rewrite": {"Noise2": 0.1}}
    )
    assert options.completion.max_steps == 5
    assert sorted(problems) == sorted(
        [
            "bogus: unknown option, ignored",
            "completion.nope: unknown option, ignored",
            "rewrite.Noise2: unknown option, ignored",
        ]
    )


def test_one_bad_value_does_not_discard_its_neighbours() -> None:
    options, problems = parse_options(
        ServerOptions, {"dtype": "float16", "completion": {"maxSteps": "x", "seed": 9, "greedy": False}}
    )
    assert len(problems) == 1 and problems[0].startswith("completion.maxSteps: ")
    assert options.dtype == "float16"
    assert (options.completion.max_steps, options.completion.seed, options.completion.greedy) == (None, 9, False)


@pytest.mark.parametrize("raw", [[1, 2], "cpu", 42, True])
def test_non_object_input(raw: Any) -> None:
    options, problems = parse_options(ServerOptions, raw)
    assert options == ServerOptions()
    assert len(problems) == 1
    assert problems[0].startswith("options: expected an object")
    assert type(raw).__name__ in problems[0]


def test_non_object_nested_section() -> None:
    options, problems = parse_options(ServerOptions, {"completion": 5, "rewrite": None, "device": "cpu"})
    assert options == ServerOptions(device="cpu")
    assert problems == ["completion: expected an object, got int; using defaults"]


def test_options_to_json_is_camel_case() -> None:
    data = options_to_json(ServerOptions())
    assert {"model", "device", "dtype", "promptFormat", "reusePromptCache", "completion", "rewrite", "engine"} <= set(data)
    assert data["completion"]["maxSteps"] is None  # unset: the model's own
    assert data["completion"]["draftIntervalMs"] == 30
    assert data["rewrite"] == {"maxSteps": None, "noise": 0.5, "greedy": True}
    json.dumps(data)  # plain JSON


@pytest.mark.parametrize(
    "options",
    [
        ServerOptions(),
        ServerOptions(
            model="/m",
            device="cpu",
            dtype="float32",
            reuse_prompt_cache=False,
            completion=CompletionOptions(enabled=False, max_steps=3, entropy_bound=0.25, cache_size=7, seed=11),
            rewrite=RewriteOptions(max_steps=9, noise=0.75, greedy=False),
        ),
    ],
)
def test_options_to_json_round_trip(options: ServerOptions) -> None:
    data = json.loads(json.dumps(options_to_json(options)))
    assert parse_options(ServerOptions, data) == (options, [])


def test_sampler_settings_from_options() -> None:
    completion = CompletionOptions(max_steps=5, entropy_bound=0.3, greedy=False)
    assert completion.sampler() == SamplerSettings(max_steps=5, entropy_bound=0.3, greedy=False)
    assert RewriteOptions(max_steps=7).sampler(0.2) == SamplerSettings(max_steps=7, entropy_bound=0.2, greedy=True)


def _get(options: Any, field: tuple[str, ...]) -> Any:
    for name in field:
        options = getattr(options, name)
    return options


def test_model_defaults_apply_unless_the_user_set_a_value() -> None:
    model = SamplerSettings(max_steps=48, entropy_bound=0.2, t_min=0.3, t_max=0.9, confidence_threshold=0.01)
    unset, _ = parse_options(ServerOptions, {})
    assert unset.completion.sampler(model) == model
    assert unset.rewrite.sampler(None, model) == model  # 48 steps: more than the rewrite minimum
    user, problems = parse_options(ServerOptions, {"completion": {"maxSteps": 12, "entropyBound": 0.5, "greedy": False}})
    assert problems == []
    merged = user.completion.sampler(model)
    assert (merged.max_steps, merged.entropy_bound, merged.greedy) == (12, 0.5, False)
    assert (merged.t_min, merged.t_max, merged.confidence_threshold) == (0.3, 0.9, 0.01)  # still the model's
    explicit_null, problems = parse_options(ServerOptions, {"completion": {"maxSteps": None}})
    assert problems == [] and explicit_null.completion.max_steps is None


def test_prompt_format_setting() -> None:
    options, problems = parse_options(ServerOptions, {"promptFormat": "chat"})
    assert problems == [] and options.prompt_format == "chat"
    options, problems = parse_options(ServerOptions, {"promptFormat": "xml"})
    assert options.prompt_format == "auto" and problems == ["promptFormat: 'xml' is not a valid choice (auto | fim | chat); using the default"]
