"""``[mesh]`` in the node config: every key read, sizes with units, one clear line per mistake."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from meshtls import ConfigError
from meshtls._config import MeshSettings

from .test_config import FILES, conf_dir, config_error, parse

__all__ = ["conf_dir"]  # the fixture, imported for this module's tests


def test_no_mesh_table_takes_the_defaults(conf_dir: Path) -> None:
    mesh = parse(FILES, conf_dir).mesh
    assert mesh == MeshSettings()
    assert (mesh.max_message_size, mesh.queue_size) == (1 << 20, 64)
    assert mesh.max_dials == 16
    assert (mesh.backoff_initial, mesh.backoff_max) == (
        timedelta(milliseconds=500),
        timedelta(seconds=30),
    )


def test_every_mesh_key_is_read(conf_dir: Path) -> None:
    text = FILES + (
        "[mesh]\n"
        'max_message_size = "64KiB"\nqueue_size = 8\nsend_timeout = "2s"\n'
        'keepalive_interval = "1s"\nkeepalive_timeout = "3s"\nupgrade_timeout = "4s"\n'
        'dial_timeout = "5s"\nbackoff_initial = "100ms"\nbackoff_max = "6s"\n'
        "max_dials = 3\n"
    )
    assert parse(text, conf_dir).mesh == MeshSettings(
        max_message_size=65536,
        queue_size=8,
        send_timeout=timedelta(seconds=2),
        keepalive_interval=timedelta(seconds=1),
        keepalive_timeout=timedelta(seconds=3),
        upgrade_timeout=timedelta(seconds=4),
        dial_timeout=timedelta(seconds=5),
        backoff_initial=timedelta(milliseconds=100),
        backoff_max=timedelta(seconds=6),
        max_dials=3,
    )


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("1000", 1000),
        ('"1000"', 1000),
        ('"1000B"', 1000),
        ('"2KiB"', 2048),
        ('"1 MiB"', 1 << 20),
        ('"1GiB"', 1 << 30),
    ],
)
def test_max_message_size_takes_bytes_or_binary_units(
    conf_dir: Path, value: str, size: int
) -> None:
    config = parse(FILES + f"[mesh]\nmax_message_size = {value}\n", conf_dir)
    assert config.mesh.max_message_size == size


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("max_message_size = 0", ["[mesh] max_message_size", "between 1 byte and", "not 0"]),
        ('max_message_size = "2GiB"', ["[mesh] max_message_size", "not 2147483648"]),
        ('max_message_size = "1MB"', ["[mesh] max_message_size", "'1MB'", "KiB, MiB, GiB"]),
        ("max_message_size = 1.5", ["[mesh] max_message_size", "the number 1.5"]),
        ("max_message_size = true", ["[mesh] max_message_size", "boolean"]),
        ("queue_size = 0", ["[mesh] queue_size", "at least 1"]),
        ("queue_size = 100000", ["[mesh] queue_size", "at most 65536"]),
        ('queue_size = "8"', ["[mesh] queue_size", "a whole number"]),
        ("max_dials = 0", ["[mesh] max_dials", "at least 1"]),
        ("max_dials = 2000", ["[mesh] max_dials", "at most 1024"]),
        ("max_dials = 1.5", ["[mesh] max_dials", "a whole number"]),
        ('send_timeout = "0s"', ["[mesh] send_timeout", "longer than 0s"]),
        ('keepalive_interval = "soon"', ["[mesh] keepalive_interval", "'soon'"]),
        ("dial_timeout = 5", ["[mesh] dial_timeout", "duration string"]),
        (
            'backoff_initial = "10s"\nbackoff_max = "1s"',
            ["[mesh] backoff_max", "shorter than backoff_initial 10s"],
        ),
        (  # sub-second values are named as written, not rounded down to 0s
            'backoff_initial = "1s"\nbackoff_max = "400ms"',
            ["[mesh] backoff_max: 400ms is shorter than backoff_initial 1s"],
        ),
        ("max_mesage_size = 1", ["[mesh] max_mesage_size", "did you mean 'max_message_size'?"]),
        ('[mesh]\nid = "x"', ["[mesh] id", "[[peers]]"]),
    ],
)
def test_each_mesh_mistake_is_one_line_naming_the_key(
    conf_dir: Path, text: str, needles: list[str]
) -> None:
    body = text if text.startswith("[mesh]") else f"[mesh]\n{text}\n"
    message = config_error(FILES + body + "\n", conf_dir)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"queue_size": 0}, "mesh queue_size must be a whole number, at least 1"),
        ({"max_message_size": 1 << 31}, "at most 1GiB"),
        ({"dial_timeout": timedelta(0)}, "mesh dial_timeout must be longer than 0s"),
        ({"max_dials": 0}, "mesh max_dials must be a whole number, at least 1"),
        ({"max_dials": 1025}, "mesh max_dials must be at most 1024"),
        (
            {"backoff_initial": timedelta(seconds=2), "backoff_max": timedelta(seconds=1)},
            "shorter than",
        ),
    ],
)
def test_hand_built_mesh_settings_are_checked_too(options: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        MeshSettings(**options)  # type: ignore[arg-type]
