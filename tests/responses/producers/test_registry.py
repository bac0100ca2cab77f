"""Tests for ``ProducerRegistry``."""

from __future__ import annotations

import pytest

from app.responses.producers.echo import EchoProducer
from app.responses.producers.registry import ProducerRegistry, UnknownProducerError


def test_get_returns_the_registered_producer() -> None:
    registry = ProducerRegistry()
    echo = EchoProducer()
    registry.register(echo)

    assert registry.get("echo") is echo
    assert "echo" in registry


def test_names_are_sorted() -> None:
    registry = ProducerRegistry()
    for name in ("zeta", "alpha", "mid"):
        registry.register(EchoProducer(name=name))

    assert registry.names() == ["alpha", "mid", "zeta"]


def test_empty_registry_has_no_names() -> None:
    registry = ProducerRegistry()

    assert registry.names() == []
    assert "echo" not in registry


def test_duplicate_name_is_refused_and_first_producer_kept() -> None:
    registry = ProducerRegistry()
    first = EchoProducer()
    registry.register(first)

    with pytest.raises(ValueError, match="'echo'"):
        registry.register(EchoProducer())

    assert registry.get("echo") is first
    assert registry.names() == ["echo"]


def test_unknown_name_raises_key_error_listing_known_names() -> None:
    registry = ProducerRegistry()
    registry.register(EchoProducer(name="echo"))
    registry.register(EchoProducer(name="alpha"))

    with pytest.raises(UnknownProducerError) as info:
        registry.get("gpt")

    assert isinstance(info.value, KeyError)
    assert str(info.value) == "unknown producer 'gpt'; known producers: 'alpha', 'echo'"
    assert info.value.name == "gpt"
    assert info.value.known == ["alpha", "echo"]
    assert "gpt" not in registry


def test_unknown_name_on_empty_registry_says_none_known() -> None:
    with pytest.raises(UnknownProducerError, match="known producers: none"):
        ProducerRegistry().get("echo")


def test_contains_ignores_non_string_keys() -> None:
    registry = ProducerRegistry()
    registry.register(EchoProducer())

    assert 1 not in registry
