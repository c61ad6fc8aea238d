"""Model references: resolving --model into a ModelRef (or a one-line error) and building the
cached random-weight checkpoint."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from autotune import models
from autotune.errors import ModelNotFoundError
from autotune.models import BUNDLED_CONFIG_DIR, EMBEDDED_NAME, ModelRef, bundled_configs, materialize, resolve_model

TINY_CONFIG = BUNDLED_CONFIG_DIR / "tiny-qwen2.json"


def _config_dir(tmp_path: Path, name: str = "mymodel") -> Path:
    directory = tmp_path / name
    directory.mkdir()
    shutil.copy(TINY_CONFIG, directory / "config.json")
    return directory


def test_default_is_embedded() -> None:
    ref = resolve_model(None)
    assert ref == ModelRef(kind="embedded", name=EMBEDDED_NAME)
    assert ref.source == "" and ref.config_sha256 is None


def test_random_weights_without_model_refused() -> None:
    with pytest.raises(ModelNotFoundError, match="--random-weights needs --model"):
        resolve_model(None, random_weights=True)


def test_bundled_configs_listed() -> None:
    assert bundled_configs()["tiny-qwen2"] == TINY_CONFIG


def test_bundled_name_needs_random_weights() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("tiny-qwen2")
    assert "--random-weights" in str(info.value) and "tiny-qwen2" in str(info.value)


def test_bundled_name_with_random_weights() -> None:
    ref = resolve_model("tiny-qwen2", random_weights=True)
    assert ref.kind == "random" and ref.name == "tiny-qwen2"
    assert Path(ref.source) == TINY_CONFIG.resolve()
    expected = hashlib.sha256(json.dumps(json.loads(TINY_CONFIG.read_text()), sort_keys=True).encode()).hexdigest()
    assert ref.config_sha256 == expected
    # Case-insensitive, and the same config hashes the same.
    assert resolve_model("Tiny-Qwen2", random_weights=True).config_sha256 == expected


def test_directory_with_only_config_needs_random_weights(tmp_path: Path) -> None:
    directory = _config_dir(tmp_path)
    with pytest.raises(ModelNotFoundError, match="no weights; add --random-weights"):
        resolve_model(str(directory))
    ref = resolve_model(str(directory), random_weights=True)
    assert ref.kind == "random" and ref.name == "mymodel"
    assert ref.source == str((directory / "config.json").resolve())
    assert ref.config_sha256 == resolve_model("tiny-qwen2", random_weights=True).config_sha256


def test_directory_with_weights_is_pretrained(tmp_path: Path) -> None:
    directory = _config_dir(tmp_path)
    (directory / "model.safetensors").write_bytes(b"")
    ref = resolve_model(str(directory))
    assert ref.kind == "pretrained" and ref.name == "mymodel" and ref.source == str(directory.resolve())


def test_config_json_file(tmp_path: Path) -> None:
    config = tmp_path / "my-config.json"
    shutil.copy(TINY_CONFIG, config)
    with pytest.raises(ModelNotFoundError, match="config without weights"):
        resolve_model(str(config))
    ref = resolve_model(str(config), random_weights=True)
    assert ref.kind == "random" and ref.name == "my-config"


def test_bad_files_refused(tmp_path: Path) -> None:
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(ModelNotFoundError, match="without config.json"):
        resolve_model(str(empty_dir))
    not_json = tmp_path / "weights.bin"
    not_json.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="not a config.json"):
        resolve_model(str(not_json))
    broken = tmp_path / "broken.json"
    broken.write_text("{\n  oops\n")
    with pytest.raises(ModelNotFoundError, match="not valid JSON"):
        resolve_model(str(broken), random_weights=True)
    no_type = tmp_path / "no-type.json"
    no_type.write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ModelNotFoundError, match="model_type"):
        resolve_model(str(no_type), random_weights=True)


def test_nonexistent_path_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not found"):
        resolve_model(str(tmp_path / "does-not-exist"))
    with pytest.raises(ModelNotFoundError, match="not found"):
        resolve_model("./nope/also-nope")


def test_hub_id_not_in_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # so 'org/name' cannot be a relative path
    model_id = "autotune-tests-nonexistent-org/no-such-model"
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(model_id)
    msg = str(info.value)
    assert "not in the local Hugging Face cache" in msg
    assert f"hf download {model_id}" in msg


# ------------------------------------------------------------------------------ materialize


def test_materialize_passes_through_pretrained() -> None:
    ref = ModelRef(kind="pretrained", name="m", source="org/m")
    assert materialize(ref) == "org/m"


def test_materialize_random_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    ref = resolve_model("tiny-qwen2", random_weights=True)
    first = Path(materialize(ref, "cpu"))
    assert first.parent == tmp_path / "cache" / "random"
    assert first.name == f"tiny-qwen2-{ref.config_sha256[:16]}"
    assert (first / "config.json").is_file()
    weights = first / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size > 0
    config = json.loads((first / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["vocab_size"] == 1024
    assert not [p for p in first.parent.iterdir() if ".tmp-" in p.name], "temporary build directory left behind"

    mtimes = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}

    def no_rebuild(*args: object) -> None:
        raise AssertionError("the cached checkpoint was built again")

    monkeypatch.setattr(models, "_build_random", no_rebuild)
    second = Path(materialize(ref, "cpu"))
    assert second == first
    assert {p.name: p.stat().st_mtime_ns for p in second.iterdir()} == mtimes


def test_materialized_random_checkpoint_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The built directory is a real checkpoint: from_pretrained reads it with the config's shapes."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    path = materialize(resolve_model("tiny-qwen2", random_weights=True), "cpu")
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert model.get_input_embeddings().weight.shape == (1024, 64)
