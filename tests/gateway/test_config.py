"""A wrong configuration stops start-up with a message that names the field and the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from adapters import CHANNEL_MODELS, adapter_class
from gateway.config_loading import GatewayConfig, load_config
from gateway.core import config as core
from gateway.core.config import Secret
from gateway.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

BOT = "bots:\n  b:\n    chatbot_id: 6f1c2a9e-3b7d-4c1e-9a52-0d4e8b7f1a23\n    client_id: cid\n    client_secret: ${OCS_SECRET}\n"
CHANNEL = "channels:\n  hooks:\n    type: webhook\n    bot: b\n    secret: ${HOOK_SECRET}\n    callback_url: https://app.example.com/cb\n"


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCS_SECRET", "s3cret")
    monkeypatch.setenv("HOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")


def _load(tmp_path: Path, text: str) -> GatewayConfig:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    config = load_config(path)
    assert config is not None
    return config


def test_valid_config_resolves_secrets_from_the_environment(tmp_path: Path) -> None:
    config = _load(tmp_path, BOT + CHANNEL)
    assert type(config.channels["hooks"]) is CHANNEL_MODELS["webhook"]
    assert config.bots["b"].client_secret == Secret("s3cret")
    assert repr(config.bots["b"].client_secret) == "Secret('**********')"
    assert "s3cret" not in repr(config)


def test_missing_secret_stops_start_up_naming_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOOK_SECRET")
    with pytest.raises(ConfigError, match=r"channels\.hooks\.webhook\.secret: environment variable HOOK_SECRET is not set"):
        _load(tmp_path, BOT + CHANNEL)


def test_secret_written_in_the_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="secrets are not written in the config file"):
        _load(tmp_path, BOT + CHANNEL.replace("${HOOK_SECRET}", "whsec_abc"))


def test_unknown_channel_type_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown channel type: use one of webhook, telegram, slack, whatsapp"):
        _load(tmp_path, BOT + CHANNEL.replace("type: webhook", "type: signal"))


def test_bad_url_is_named_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"callback_url: 'ftp://x' is not an http\(s\) URL"):
        _load(tmp_path, BOT + CHANNEL.replace("https://app.example.com/cb", "ftp://x"))


def test_channel_naming_an_undefined_bot_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="uses bot 'nope', which is not under bots"):
        _load(tmp_path, BOT + CHANNEL.replace("bot: b", "bot: nope"))


def test_oauth_bot_without_credentials_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="auth: oauth needs client_id and client_secret"):
        _load(tmp_path, "bots:\n  b:\n    chatbot_id: 6f1c2a9e-3b7d-4c1e-9a52-0d4e8b7f1a23\n" + CHANNEL)


def test_chatbot_id_must_be_a_uuid(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a UUID"):
        _load(tmp_path, BOT.replace("6f1c2a9e-3b7d-4c1e-9a52-0d4e8b7f1a23", "clinic-bot") + CHANNEL)


def test_callback_host_outside_the_allowlist_is_refused(tmp_path: Path) -> None:
    text = BOT + CHANNEL + "    callback_allowlist: [other.example.com]\n"
    with pytest.raises(ConfigError, match="not in callback_allowlist"):
        _load(tmp_path, text)


def test_misspelled_field_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown field"):
        _load(tmp_path, BOT + CHANNEL + "    calback_url: https://x.example\n")


def test_no_file_means_no_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OCS_GATEWAY_CONFIG", raising=False)
    assert load_config() is None


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")


@pytest.mark.parametrize("kind", sorted(CHANNEL_MODELS))
def test_each_channel_type_is_read_by_its_adapters_model(kind: str) -> None:
    assert get_args(CHANNEL_MODELS[kind].model_fields["type"].annotation) == (kind,)
    assert adapter_class(kind).kind == kind


def test_core_alone_reads_no_channel_type() -> None:
    # Core knows no platform: only the assembly's model (gateway.config_loading) reads channels.
    data = {"bots": {"b": {"chatbot_id": "6f1c2a9e-3b7d-4c1e-9a52-0d4e8b7f1a23", "auth": "keyless"}},
            "channels": {"hooks": {"type": "webhook", "bot": "b"}}}
    with pytest.raises(ConfigError, match="channels: unknown channel type: no channel types are registered"):
        core.GatewayConfig.from_mapping(data)


def test_a_webhook_only_configuration_loads_no_platform_sdk(tmp_path: Path) -> None:
    # The adapters' config models import no SDK: reading the configuration and building the app
    # of a webhook-only deployment never loads python-telegram-bot or slack_sdk.
    (tmp_path / "gateway.yaml").write_text(BOT + CHANNEL)
    script = (
        "import sys\n"
        "from gateway.config_loading import load_config\n"
        "from gateway.edge.app import create_app\n"
        f"config = load_config({str(tmp_path / 'gateway.yaml')!r})\n"
        "create_app(config, 'redis://127.0.0.1:9')\n"
        "print(sorted(m for m in ('telegram', 'slack_sdk', 'slack_bolt') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OCS_SECRET": "s3cret", "HOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
