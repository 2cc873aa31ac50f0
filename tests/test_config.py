"""Strict YAML configuration (worker/config.py) and the config × model cross-checks."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, make_config
from worker.config import load_config, masked, parse_config
from worker.errors import ConfigError

MINIMAL = """\
bindings:
  - collection: sophia-ai/slack-messages-enriched
    preset: slack_message
"""


def write(tmp_path: Path, text: str, name: str = "worker.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_minimal_config_gets_documented_defaults(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), env={})
    assert config.server.port == 9010
    assert config.server.host == "127.0.0.1"  # listen on loopback unless told otherwise
    assert config.model == "all-minilm-l6-v2"
    assert config.sinks.names() == ["local"]
    assert config.chunking.max_tokens <= 256


def test_shipped_local_config_loads():
    config = load_config(REPO / "configs" / "local.yaml", env={})
    assert [b.preset for b in config.bindings] == ["gong_call", "slack_message", "github_document"]
    assert config.server.port == 9010
    assert config.sinks.local is not None
    # Without the env vars the dev tokens apply; with them, the env wins.
    assert config.server.webhook_token.get_secret_value() == "dev-webhook-token"
    config = load_config(REPO / "configs" / "local.yaml",
                         env={"MEMORY_WORKER_WEBHOOK_TOKEN": "prod-hook"})
    assert config.server.webhook_token.get_secret_value() == "prod-hook"


@pytest.mark.parametrize("yaml_text, key", [
    (MINIMAL + "chunking:\n  max_token: 100\n", "chunking.max_token"),
    (MINIMAL + "sever:\n  port: 9011\n", "sever"),
    ("bindings:\n  - collection: c\n    preset: slack_message\n    chunkr: plain\n", "bindings.0.chunkr"),
    (MINIMAL + "sinks:\n  local:\n    path: x\n    tabel: t\n", "sinks.local.tabel"),
])
def test_unknown_key_names_the_key_and_the_file(tmp_path, yaml_text, key):
    path = write(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    message = str(err.value)
    assert str(path) in message
    assert repr(key) in message
    assert "unknown key" in message


def test_missing_required_key_and_bad_value_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"missing required key 'bindings'"):
        load_config(write(tmp_path, "model: all-minilm-l6-v2\n"), env={})
    with pytest.raises(ConfigError, match=r"'server.port'"):
        load_config(write(tmp_path, MINIMAL + "server:\n  port: 70000\n"), env={})


def test_env_substitution_with_and_without_default(tmp_path):
    path = write(tmp_path, MINIMAL + """\
        server:
          port: ${PORT}
          webhook_token: ${HOOK:-fallback-token}
          query_token: "q-${TEAM:-core}-${STAGE}"
        """.replace("        ", ""))
    config = load_config(path, env={"PORT": "9100", "STAGE": "prod"})
    assert config.server.port == 9100
    assert config.server.webhook_token.get_secret_value() == "fallback-token"
    assert config.server.query_token.get_secret_value() == "q-core-prod"
    config = load_config(path, env={"PORT": "9100", "STAGE": "prod", "HOOK": "from-env"})
    assert config.server.webhook_token.get_secret_value() == "from-env"
    # An empty default is still a default, not a missing variable.
    empty = write(tmp_path, MINIMAL + "sinks:\n  pinecone:\n    api_key: k\n    index: i\n"
                                       "    namespace: ${NAMESPACE:-}\n", "empty.yaml")
    assert load_config(empty, env={}).sinks.pinecone.namespace == ""
    assert load_config(empty, env={"NAMESPACE": "prod"}).sinks.pinecone.namespace == "prod"


def test_missing_env_var_names_the_key_the_variable_and_the_file(tmp_path):
    path = write(tmp_path, MINIMAL + "sinks:\n  pinecone:\n    api_key: ${PINECONE_API_KEY}\n"
                                      "    index: memory\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    message = str(err.value)
    assert "'sinks.pinecone.api_key'" in message
    assert "PINECONE_API_KEY" in message
    assert str(path) in message


SECRETS = {"HOOK": "hook-s3cret-value", "QUERY": "query-s3cret-value",
           "PINECONE": "pc-s3cret-value", "WEAVIATE": "wv-s3cret-value"}
WITH_SECRETS = MINIMAL + """\
server:
  webhook_token: ${HOOK}
  query_token: ${QUERY}
sinks:
  local: {}
  pinecone:
    api_key: ${PINECONE}
    index: memory
  weaviate:
    url: http://127.0.0.1:8080
    api_key: ${WEAVIATE}
"""


def test_secrets_never_appear_in_masked_repr_or_str(tmp_path):
    config = load_config(write(tmp_path, WITH_SECRETS), env=SECRETS)
    assert config.sinks.pinecone.api_key.get_secret_value() == SECRETS["PINECONE"]  # loaded...
    shown = masked(config)
    rendered = [json.dumps(shown, default=str), repr(config), str(config), repr(config.sinks),
                repr(config.server), f"{config.sinks.pinecone}"]
    for text in rendered:
        for secret in SECRETS.values():
            assert secret not in text  # ...but never shown
    assert shown["server"]["webhook_token"] == "***"
    assert shown["sinks"]["pinecone"]["api_key"] == "***"
    assert shown["sinks"]["pinecone"]["index"] == "memory"  # non-secrets stay readable


def test_errors_never_echo_a_secret_value(tmp_path):
    # A wrong type for a secret field: the error names the key but must not print the value.
    path = write(tmp_path, MINIMAL + "server:\n  webhook_token: [hook-s3cret-value]\n"
                                      "  port: not-a-port-s3cret\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    message = str(err.value)
    assert "'server.webhook_token'" in message and "'server.port'" in message
    assert "s3cret" not in message


def test_cross_field_checks_inside_the_config(tmp_path):
    with pytest.raises(ConfigError, match=r"overlap_tokens 128 must be below half of chunking.max_tokens 200"):
        make_config(tmp_path, chunking={"max_tokens": 200, "overlap_tokens": 128})
    bindings = [{"collection": "c", "preset": "slack_message"}] * 2
    with pytest.raises(ConfigError, match=r"collection 'c' is bound twice"):
        make_config(tmp_path, bindings=bindings)
    with pytest.raises(ConfigError, match=r"no sink configured"):
        make_config(tmp_path, sinks={})


def test_generic_binding_must_say_what_it_maps(tmp_path):
    with pytest.raises(ConfigError, match=r"missing: source, key, text"):
        make_config(tmp_path, bindings=[{"collection": "acme/notes"}])
    with pytest.raises(ConfigError, match=r"'id' is not a JSON pointer"):
        make_config(tmp_path, bindings=[{"collection": "acme/notes", "source": "notes",
                                         "key": ["id"], "text": ["/body"]}])


def test_max_tokens_above_the_model_maximum_is_a_clear_error(tmp_path, spec):
    from worker.runtime import check_cross_fields

    config = make_config(tmp_path, chunking={"max_tokens": 512, "overlap_tokens": 32})
    with pytest.raises(ConfigError) as err:
        check_cross_fields(config, spec)
    message = str(err.value)
    assert "chunking.max_tokens 512" in message
    assert f"max sequence {spec.max_seq_tokens}" in message
    assert f"at most {spec.max_seq_tokens}" in message  # says how to fix it


def test_batch_budget_below_the_model_maximum_is_a_clear_error(tmp_path, spec):
    from worker.runtime import check_cross_fields

    config = make_config(tmp_path, embedding={"device": "cpu", "max_batch_tokens": 256})
    check_cross_fields(config, spec)  # 256 = MiniLM's max sequence: fine
    small = spec.model_copy(update={"max_seq_tokens": 512})
    with pytest.raises(ConfigError, match=r"embedding.max_batch_tokens 256 is below .* raise it"):
        check_cross_fields(config, small)


def test_runtime_refuses_a_config_the_model_cannot_serve(tmp_path, runtime_factory):
    config = make_config(tmp_path, chunking={"max_tokens": 300, "overlap_tokens": 32})
    with pytest.raises(ConfigError, match=r"chunking.max_tokens 300"):
        runtime_factory(config)


def test_parse_config_rejects_a_non_mapping():
    with pytest.raises(ConfigError, match=r"x.yaml: the top level must be a mapping"):
        parse_config(["not", "a", "mapping"], file=Path("x.yaml"), env={})


def test_invalid_yaml_names_the_file(tmp_path):
    path = write(tmp_path, "bindings: [\n")
    with pytest.raises(ConfigError, match="invalid YAML") as err:
        load_config(path, env={})
    assert str(path) in str(err.value)
