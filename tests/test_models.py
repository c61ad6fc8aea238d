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


def test_a_random_model_too_big_for_the_gpu_is_built_on_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model meant to run offloaded does not fit the GPU in full: its checkpoint is built in host
    memory instead of failing the trial (the offload GPU test's OOM), with the same weights."""
    import torch
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    ref = resolve_model("tiny-qwen2", random_weights=True)
    expected = AutoModelForCausalLM.from_pretrained(materialize(ref, "cpu")).state_dict()
    shutil.rmtree(tmp_path / "cache")
    real = AutoModelForCausalLM.from_config
    devices: list[str] = []

    def from_config(*args, **kwargs):
        devices.append(str(torch.get_default_device()))
        if devices[-1].startswith("cuda"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 44.00 MiB.")
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_config", from_config)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)  # no CUDA on this machine
    path = materialize(ref, "cuda:0")
    assert devices == ["cuda:0", "cpu"]
    built = AutoModelForCausalLM.from_pretrained(path).state_dict()
    assert built.keys() == expected.keys() and all(torch.equal(built[k], expected[k]) for k in expected)


# ------------------------------------------------------------------------------ rebuildable caches in RAM


def _scratch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, Path]:
    disk, ram = tmp_path / "cache", tmp_path / "ram"
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(disk))
    monkeypatch.setenv(models.SCRATCH_ENV, str(ram))
    return disk, ram


def test_rebuildable_builds_go_to_ram_only_on_a_gpu_with_room(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk, ram = _scratch(monkeypatch, tmp_path)
    assert models.rebuildable_dir("random/m", "cuda:0", 1024**2) == ram / "random" / "m"
    # CPU candidates measure host memory themselves: a RAM copy would crowd them.
    assert models.rebuildable_dir("random/m", "cpu", 1024**2) == disk / "random" / "m"
    # More than half of the available RAM, or more than the folder's free space: disk.
    assert models.rebuildable_dir("random/m", "cuda:0", 1024**5) == disk / "random" / "m"
    # A size nobody could count (an architecture the memory model does not know): disk.
    assert models.rebuildable_dir("random/m", "cuda:0", None) == disk / "random" / "m"
    monkeypatch.setenv(models.SCRATCH_ENV, "off")
    assert models.rebuildable_dir("random/m", "cuda:0", 1024**2) == disk / "random" / "m"
    # A RAM folder that cannot be made (here: below a file, a typo'd path): disk, not a failed build.
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(models.SCRATCH_ENV, str(tmp_path / "a-file" / "ram"))
    assert models.rebuildable_dir("random/m", "cuda:0", 1024**2) == disk / "random" / "m"


def test_rebuildable_build_is_found_where_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished build is used wherever it lies, so a CPU load_deployment finds the RAM copy a
    GPU study made, and a GPU study finds a disk copy from before RAM was used."""
    disk, ram = _scratch(monkeypatch, tmp_path)
    (ram / "random" / "in-ram").mkdir(parents=True)
    (ram / "random" / "in-ram" / "config.json").write_text("{}")
    (disk / "random" / "on-disk").mkdir(parents=True)
    (disk / "random" / "on-disk" / "config.json").write_text("{}")
    assert models.rebuildable_dir("random/in-ram", "cpu", 1024) == ram / "random" / "in-ram"
    assert models.rebuildable_dir("random/on-disk", "cuda:0", 1024) == disk / "random" / "on-disk"
    # A half-written build (no marker) is not a build.
    (ram / "random" / "half").mkdir()
    assert models.rebuildable_dir("random/half", "cpu", 1024) == disk / "random" / "half"


def test_no_ram_folder_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(models.SCRATCH_ENV, raising=False)
    assert models.scratch_dir() is None
    assert models.rebuildable_dir("random/m", "cuda:0", 1024).parent.parent == models.cache_dir()


def test_random_checkpoint_size_is_counted_from_the_config() -> None:
    ref = resolve_model("qwen2.5-7b-instruct", random_weights=True)
    # Qwen2.5-7B has 7.6 billion parameters, stored in bf16: 15.2 GB.
    assert models.random_checkpoint_bytes(ref) == pytest.approx(15.23e9, rel=0.01)


def test_cache_command_lists_and_clears_both_places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import assert_ok, cli_env, run_cli

    disk, ram = _scratch(monkeypatch, tmp_path)
    ref = resolve_model("tiny-qwen2", random_weights=True)
    on_disk = Path(materialize(ref, "cpu"))
    in_ram = ram / "random" / on_disk.name
    shutil.copytree(on_disk, in_ram)
    env = cli_env(AUTOTUNE_CACHE_DIR=str(disk), **{models.SCRATCH_ENV: str(ram)})
    listed = run_cli("cache", env=env)
    assert_ok(listed)
    assert "RAM " in listed.stdout and str(in_ram) in listed.stdout and str(on_disk) in listed.stdout
    assert "2 rebuildable build(s)" in listed.stdout
    cleared = run_cli("cache", "--clear", env=env)
    assert_ok(cleared)
    assert not in_ram.exists() and not on_disk.exists()
    assert "0 rebuildable build(s)" in run_cli("cache", env=env).stdout
    # Rebuilt when needed again.
    assert (Path(materialize(ref, "cpu")) / "config.json").is_file()
