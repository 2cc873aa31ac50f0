"""Model specs in models/ (worker/modelspec.py) and how their weights are found (worker/embed.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO
from worker.embed import resolve_weights
from worker.errors import ConfigError, ModelError
from worker.modelspec import load_spec

MODELS = REPO / "models"
SHIPPED = sorted(p.stem for p in MODELS.glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_spec_loads_and_is_named_after_its_file(name):
    spec = load_spec(name, models_dir=MODELS, env={})
    assert spec.id == name
    assert spec.max_seq_tokens >= 128
    assert spec.dtype.cpu == "float32"


def test_the_default_spec_matches_the_shipped_weights(spec, embedder):
    weights = Path(resolve_weights(spec, allow_download=False))
    st_config = json.loads((weights / "sentence_bert_config.json").read_text())
    assert spec.max_seq_tokens == st_config["max_seq_length"]
    assert spec.dimensions == embedder.model.get_embedding_dimension() == 384
    assert embedder.dtype == "float32"


def test_hub_model_directories_follow_memory_worker_models(tmp_path):
    spec = load_spec("bge-small-en-v1.5", models_dir=MODELS, env={})
    assert spec.load.directory == Path("/opt/models/bge-small-en-v1.5")  # the image's default
    spec = load_spec("bge-small-en-v1.5", models_dir=MODELS, env={"MEMORY_WORKER_MODELS": str(tmp_path)})
    assert spec.load.directory == tmp_path / "bge-small-en-v1.5"
    assert spec.prompts.query and not spec.prompts.passage  # asymmetric: only queries get a prompt


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        load_spec("all-minilm-l12", models_dir=MODELS, env={})
    assert "all-minilm-l12" in str(err.value)
    for name in SHIPPED:
        assert name in str(err.value)


def test_a_spec_file_can_be_given_by_path(tmp_path):
    path = tmp_path / "custom.yaml"
    path.write_text((MODELS / "all-minilm-l6-v2.yaml").read_text())
    assert load_spec(str(path), models_dir=None, env={}).id == "all-minilm-l6-v2"


@pytest.mark.parametrize("patch, key", [
    ({"dimension": 384}, "dimension"),  # typo of 'dimensions'
    ({"dtype": {"cpu": "float16"}}, "dtype.cpu"),  # never half precision on CPU
    ({"load": {}}, "load"),  # no source at all
])
def test_bad_spec_names_the_file_and_the_key(tmp_path, patch, key):
    import yaml

    data = yaml.safe_load((MODELS / "all-minilm-l6-v2.yaml").read_text())
    data.update(patch)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_spec(str(path), models_dir=None, env={})
    assert str(path) in str(err.value)
    assert repr(key) in str(err.value)


def test_fingerprint_is_stable_and_tracks_what_changes_vectors(spec):
    again = load_spec("all-minilm-l6-v2", models_dir=MODELS, env={})
    assert again.fingerprint == spec.fingerprint
    assert spec.fingerprint.startswith("all-minilm-l6-v2@")
    for update in ({"max_seq_tokens": 128}, {"normalize": False}, {"dimensions": 768},
                   {"prompts": spec.prompts.model_copy(update={"passage": "passage: "})}):
        assert spec.model_copy(update=update).fingerprint != spec.fingerprint, update
    # Query prompts do not change stored vectors, so they must not invalidate the cache.
    same = spec.model_copy(update={"prompts": spec.prompts.model_copy(update={"query": "q: "})})
    assert same.fingerprint == spec.fingerprint


def test_missing_weights_without_download_is_a_model_error_saying_how_to_fix(tmp_path):
    spec = load_spec("bge-small-en-v1.5", models_dir=MODELS, env={"MEMORY_WORKER_MODELS": str(tmp_path)})
    with pytest.raises(ModelError) as err:
        resolve_weights(spec, allow_download=False)
    assert str(tmp_path / "bge-small-en-v1.5") in str(err.value)
    assert "Dockerfile.gpu" in str(err.value)
    assert resolve_weights(spec, allow_download=True) == "BAAI/bge-small-en-v1.5"
    (tmp_path / "bge-small-en-v1.5").mkdir()
    assert resolve_weights(spec, allow_download=False) == str(tmp_path / "bge-small-en-v1.5")
