"""``engine`` options: parsing, validation, and the remote settings they turn into."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dg_lsp.config import EngineOptions, ServerOptions, options_to_json, parse_options
from dg_lsp.engine.remote import RemoteSettings
from dg_lsp.server.model_manager import ModelSpec, engine_facts, remote_settings


def test_defaults_are_local() -> None:
    engine = ServerOptions().engine
    assert engine == EngineOptions()
    assert (engine.kind, engine.url, engine.token_file, engine.dialect, engine.model) == ("local", None, None, "dg", None)
    assert (engine.timeout_ms, engine.connect_timeout_ms, engine.retries, engine.fim_template) == (30000, 3000, 2, None)


def test_camel_case_remote_options() -> None:
    raw = {
        "engine": {
            "kind": "remote",
            "url": "http://gpu-box:8765",
            "tokenFile": "~/.config/dg-lsp/token",
            "dialect": "openai",
            "model": "diffusiongemma",
            "timeoutMs": 5000,
            "connectTimeoutMs": 250,
            "retries": 4,
            "fimTemplate": "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>",
        }
    }
    options, problems = parse_options(ServerOptions, raw)
    assert problems == []
    assert options.engine == EngineOptions(
        kind="remote",
        url="http://gpu-box:8765",
        token_file="~/.config/dg-lsp/token",
        dialect="openai",
        model="diffusiongemma",
        timeout_ms=5000,
        connect_timeout_ms=250,
        retries=4,
        fim_template="<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>",
    )
    assert options.completion == ServerOptions().completion  # neighbours untouched


def test_remote_without_url_falls_back_to_local() -> None:
    options, problems = parse_options(ServerOptions, {"engine": {"kind": "remote", "tokenFile": "/t"}})
    assert options.engine.kind == "local" and options.engine.token_file == "/t"
    assert problems == ['engine.kind: "remote" needs engine.url; using the local model']


def test_an_invalid_url_is_reported_and_remote_then_falls_back() -> None:
    options, problems = parse_options(ServerOptions, {"engine": {"kind": "remote", "url": "gpu-box:8765"}})
    assert options.engine.kind == "local" and options.engine.url is None
    assert problems == [
        "engine.url: 'gpu-box:8765' is not an http:// or https:// URL; using the default",
        'engine.kind: "remote" needs engine.url; using the local model',
    ]


@pytest.mark.parametrize(
    ("raw", "path", "message"),
    [
        ({"kind": "cluster"}, "engine.kind", "is not a valid choice (local | remote)"),
        ({"kind": 1}, "engine.kind", "is not a valid choice (local | remote)"),
        ({"dialect": "vllm"}, "engine.dialect", "is not a valid choice (dg | openai | chat)"),
        ({"url": 8765}, "engine.url", "is not a valid"),
        ({"tokenFile": ["a"]}, "engine.tokenFile", "is not a valid"),
        ({"timeoutMs": 50}, "engine.timeoutMs", "is out of range"),
        ({"timeoutMs": "1000"}, "engine.timeoutMs", "is not a valid int"),
        ({"connectTimeoutMs": 0}, "engine.connectTimeoutMs", "is out of range"),
        ({"retries": -1}, "engine.retries", "is out of range"),
        ({"retries": 11}, "engine.retries", "is out of range"),
        ({"fimTemplate": "<fim>{suffix}"}, "engine.fimTemplate", "is not a template containing {prefix}"),
    ],
)
def test_bad_values_are_reported_and_defaulted(raw: dict[str, Any], path: str, message: str) -> None:
    options, problems = parse_options(ServerOptions, {"engine": raw})
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: ") and message in problems[0]
    assert options.engine == EngineOptions()


def test_null_clears_optional_strings() -> None:
    options, problems = parse_options(ServerOptions, {"engine": {"url": None, "tokenFile": None, "model": None}})
    assert problems == [] and options.engine == EngineOptions()


def test_unknown_engine_keys_are_reported() -> None:
    _, problems = parse_options(ServerOptions, {"engine": {"host": "x"}})
    assert problems == ["engine.host: unknown option, ignored"]


def test_round_trip_through_json() -> None:
    options = ServerOptions(
        engine=EngineOptions(kind="remote", url="https://engine.example", token_file="/tok", dialect="openai", retries=0)
    )
    data = json.loads(json.dumps(options_to_json(options)))
    assert data["engine"]["tokenFile"] == "/tok" and data["engine"]["connectTimeoutMs"] == 3000
    assert parse_options(ServerOptions, data) == (options, [])


def test_remote_settings_from_options() -> None:
    engine = EngineOptions(
        kind="remote", url="http://h:1/v1/", token_file="/t", dialect="openai", model="m",
        timeout_ms=1500, connect_timeout_ms=200, retries=5, fim_template="{prefix}",
    )
    settings = remote_settings(engine)
    assert settings == RemoteSettings(
        url="http://h:1/v1/", token_file="/t", dialect="openai", model="m",
        timeout_s=1.5, connect_timeout_s=0.2, retries=5, fim_template="{prefix}",
    )
    assert settings.base_url == "http://h:1"
    with pytest.raises(ValueError):
        remote_settings(EngineOptions())


@pytest.mark.parametrize(
    ("url", "base"),
    [("http://h:8765", "http://h:8765"), ("http://h:8765/", "http://h:8765"), ("https://h/v1", "https://h"),
     ("http://h/proxy/", "http://h/proxy")],
)
def test_base_url(url: str, base: str) -> None:
    assert RemoteSettings(url=url).base_url == base


def test_engine_facts_for_info() -> None:
    assert engine_facts(RemoteSettings(url="http://h:1/", dialect="openai")) == {
        "kind": "remote", "url": "http://h:1", "dialect": "openai",
    }
    assert engine_facts(ModelSpec(path=Path("/m"), device="cpu", dtype="auto")) == {"kind": "local"}
    assert engine_facts(None) == {"kind": "local"}
