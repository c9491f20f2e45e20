from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from sampler.jukebox.checkpoint import (
    PRIOR_PARTS,
    CheckpointError,
    CheckpointMismatch,
    build_on_meta,
    check_state_dict,
    expected_shapes,
    hf_key_to_original,
    load_checkpoint,
    load_hf_checkpoint,
    load_state_dict_into,
    original_key_to_hf,
    read_checkpoint,
    save_checkpoint,
    split_hf_state_dict,
)
from sampler.jukebox.vqvae import VQVAE, VQVAEConfig
from tests.sampler.jukebox.conftest import TINY_VQVAE_HPARAMS, tiny_audio

pytestmark = pytest.mark.usefixtures("single_thread")

DATA = Path(__file__).resolve().parents[2] / "data"
KEYMAP_PARTS = {
    "vqvae": "vqvae",
    "up0": "prior_level_0",
    "up1": "prior_level_1",
    "1b": "prior_level_2",
    "5bl": "prior_level_2",
}


def fresh_vqvae() -> VQVAE:
    return VQVAE(VQVAEConfig.from_hparams(TINY_VQVAE_HPARAMS)).eval()


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# Original format


def test_save_then_load_round_trip(tiny_vqvae: VQVAE, tiny_vqvae_checkpoint: Path) -> None:
    payload = torch.load(tiny_vqvae_checkpoint, weights_only=True)
    assert list(payload) == ["model"] and len(payload["model"]) == len(tiny_vqvae.state_dict())
    model = load_checkpoint(fresh_vqvae(), tiny_vqvae_checkpoint)
    assert_same_state(model.state_dict(), tiny_vqvae.state_dict())
    audio = tiny_audio()
    codes = model.encode(audio)
    assert all(torch.equal(a, b) for a, b in zip(codes, tiny_vqvae.encode(audio), strict=True))


def test_save_replaces_atomically_and_leaves_no_partial_file(tiny_vqvae: VQVAE, tmp_path: Path) -> None:
    path = save_checkpoint(tiny_vqvae, tmp_path / "x.pth.tar")
    save_checkpoint(tiny_vqvae.state_dict(), path)
    assert [p.name for p in tmp_path.iterdir()] == ["x.pth.tar"]


def test_module_prefix_is_stripped(tiny_vqvae: VQVAE, tmp_path: Path) -> None:
    path = tmp_path / "ddp.pth.tar"
    torch.save({"model": {"module." + k: v for k, v in tiny_vqvae.state_dict().items()}, "step": 7}, path)
    model = load_checkpoint(fresh_vqvae(), path)
    assert_same_state(model.state_dict(), tiny_vqvae.state_dict())


def test_legacy_non_zip_format_loads(tiny_vqvae: VQVAE, tmp_path: Path) -> None:
    """The released files were written by PyTorch 1.4, before the zip format."""
    path = tmp_path / "legacy.pth.tar"
    torch.save({"model": tiny_vqvae.state_dict()}, path, _use_new_zipfile_serialization=False)
    assert_same_state(load_checkpoint(fresh_vqvae(), path).state_dict(), tiny_vqvae.state_dict())


def test_file_dtype_is_cast_to_the_model_dtype(tiny_vqvae: VQVAE, tmp_path: Path) -> None:
    path = save_checkpoint(
        {k: v.half() for k, v in tiny_vqvae.state_dict().items()}, tmp_path / "fp16.pth.tar"
    )
    model = load_checkpoint(fresh_vqvae(), path)
    for key, value in model.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, tiny_vqvae.state_dict()[key].half().float())
    bf16 = load_checkpoint(VQVAE(tiny_vqvae.config, dtype=torch.bfloat16), path)
    assert bf16.conv_dtype == torch.bfloat16
    assert bf16.bottleneck.level_blocks[0].k.dtype == torch.float32


def test_loading_into_a_meta_module_assigns_real_tensors(
    tiny_vqvae: VQVAE, tiny_vqvae_checkpoint: Path
) -> None:
    model = build_on_meta(fresh_vqvae)
    load_checkpoint(model, tiny_vqvae_checkpoint, device="cpu")
    assert not any(t.is_meta for t in model.state_dict().values())
    assert_same_state(model.state_dict(), tiny_vqvae.state_dict())
    audio = tiny_audio()
    assert torch.equal(model.encode(audio)[2], tiny_vqvae.encode(audio)[2])


def test_meta_module_with_non_persistent_buffers_is_refused(tiny_vqvae_checkpoint: Path) -> None:
    model = build_on_meta(fresh_vqvae)
    model.register_buffer("window", torch.ones(4, device="meta"), persistent=False)
    with pytest.raises(CheckpointError, match=r"non-persistent buffers \(window\)"):
        load_checkpoint(model, tiny_vqvae_checkpoint)


# ---------------------------------------------------------------------------------------------
# Key and shape mismatches: named, and the model is left untouched


def _load_expecting_mismatch(state: dict[str, torch.Tensor], tmp_path: Path) -> CheckpointMismatch:
    path = save_checkpoint(state, tmp_path / "bad.pth.tar")
    model = fresh_vqvae()
    before = snapshot(model)
    with pytest.raises(CheckpointMismatch) as info:
        load_checkpoint(model, path)
    assert_same_state(model.state_dict(), before)  # validated before anything was copied
    assert str(path) in str(info.value)
    return info.value


def test_missing_key(tiny_vqvae: VQVAE, tmp_path: Path) -> None:
    state = tiny_vqvae.state_dict()
    del state["decoders.1.out.weight"]
    error = _load_expecting_mismatch(state, tmp_path)
    assert "1 missing key (e.g. decoders.1.out.weight)" in str(error)
    assert error.missing == ["decoders.1.out.weight"] and not error.unexpected and not error.wrong_shapes


def test_unexpected_key(tiny_vqvae: VQVAE, tmp_path: Path) -> None:
    state = {**tiny_vqvae.state_dict(), "bottleneck.level_blocks.0.k_sum": torch.zeros(64, 16)}
    error = _load_expecting_mismatch(state, tmp_path)
    assert "1 unexpected (bottleneck.level_blocks.0.k_sum)" in str(error)


def test_wrong_shape(tiny_vqvae: VQVAE, tmp_path: Path) -> None:
    state = {**tiny_vqvae.state_dict(), "bottleneck.level_blocks.2.k": torch.zeros(32, 16)}
    error = _load_expecting_mismatch(state, tmp_path)
    assert "1 wrong shape (bottleneck.level_blocks.2.k: file (32, 16) vs model (64, 16))" in str(error)


def test_all_kinds_of_mismatch_in_one_message(tiny_vqvae: VQVAE, tmp_path: Path) -> None:
    state = tiny_vqvae.state_dict()
    missing = [k for k in state if k.startswith("decoders.2.")]
    for key in missing:
        del state[key]
    state["foo"] = torch.zeros(1)
    state["decoders.0.out.bias"] = torch.zeros(2)
    state["decoders.1.out.bias"] = torch.zeros(3)
    error = _load_expecting_mismatch(state, tmp_path)
    message = str(error)
    assert f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})" in message
    assert "1 unexpected (foo)" in message
    assert "2 wrong shapes (decoders.0.out.bias: file (2) vs model (1), decoders.1.out.bias" in message


def test_expected_map_is_checked_too(tiny_vqvae: VQVAE, tiny_vqvae_checkpoint: Path) -> None:
    """A file that fits the module but not the published layout is refused."""
    published = expected_shapes(build_on_meta(lambda: VQVAE(VQVAEConfig.published())))
    model = fresh_vqvae()
    before = snapshot(model)
    with pytest.raises(CheckpointMismatch, match="wrong shapes"):
        load_checkpoint(model, tiny_vqvae_checkpoint, expected=published)
    assert_same_state(model.state_dict(), before)
    check_state_dict(tiny_vqvae.state_dict(), expected_shapes(tiny_vqvae))  # and a good one passes


# ---------------------------------------------------------------------------------------------
# Files that cannot be read


def test_truncated_file(tiny_vqvae_checkpoint: Path) -> None:
    data = tiny_vqvae_checkpoint.read_bytes()
    tiny_vqvae_checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated .*jukebot models download vqvae"):
        read_checkpoint(tiny_vqvae_checkpoint, name="vqvae")


def test_truncated_legacy_file(tiny_vqvae: VQVAE, tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth.tar"
    torch.save({"model": tiny_vqvae.state_dict()}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*corrupt.*jukebot models download"):
        read_checkpoint(path)


def test_not_a_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "vqvae.pth.tar"
    path.write_text("<html>502 Bad Gateway</html>")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_checkpoint(path)


def test_missing_file_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(
        CheckpointError, match="does not exist; download it with `jukebot models download prior_5b`"
    ):
        read_checkpoint(tmp_path / "nope.pth.tar", name="prior_5b")


def test_wrong_payloads(tmp_path: Path) -> None:
    path = tmp_path / "x.pth.tar"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="holds a list, not a dict of weights"):
        read_checkpoint(path)
    torch.save({"model": {"a": torch.zeros(1), "b": 3}}, path)
    with pytest.raises(CheckpointError, match="entry 'b' is a int, not a tensor"):
        read_checkpoint(path)


def _leave_a_mark(path: str) -> None:
    Path(path).write_text("code from the checkpoint ran")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_leave_a_mark, (str(self.marker),))


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_pickled_object_is_refused_and_never_built(
    tiny_vqvae: VQVAE, tmp_path: Path, zip_format: bool
) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth.tar"
    torch.save(
        {"model": tiny_vqvae.state_dict(), "extra": _Payload(marker)},
        path,
        _use_new_zipfile_serialization=zip_format,
    )
    with pytest.raises(CheckpointError, match=r"carries a Python object \(.*_leave_a_mark\).*not unpickled"):
        read_checkpoint(path)
    assert not marker.exists()


def test_original_hparams_object_beside_the_weights_is_read_as_a_dict(
    tiny_vqvae: VQVAE, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training checkpoints may carry `jukebox.hparams.Hyperparams`; it is allow-listed as a dict."""

    class Hyperparams(dict):  # type: ignore[type-arg]
        pass

    Hyperparams.__module__, Hyperparams.__qualname__ = "jukebox.hparams", "Hyperparams"
    package, module = types.ModuleType("jukebox"), types.ModuleType("jukebox.hparams")
    module.Hyperparams = Hyperparams  # type: ignore[attr-defined]
    package.hparams = module  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "jukebox", package)
    monkeypatch.setitem(sys.modules, "jukebox.hparams", module)
    path = tmp_path / "train.pth.tar"
    torch.save({"model": tiny_vqvae.state_dict(), "hps": Hyperparams(l_bins=64), "step": 3}, path)
    monkeypatch.delitem(sys.modules, "jukebox.hparams")  # loading must not need the original class
    monkeypatch.delitem(sys.modules, "jukebox")
    assert_same_state(read_checkpoint(path), tiny_vqvae.state_dict())


# ---------------------------------------------------------------------------------------------
# HuggingFace format


def _keymap(name: str) -> dict[tuple[str, str], str]:
    raw = json.loads((DATA / f"hf_keymap_jukebox-{name}-lyrics.json").read_text())
    mapping = {}
    for tagged, hf_key in raw.items():
        part, key = tagged.split(":", 1)
        mapping[(KEYMAP_PARTS[part], key)] = hf_key
    return mapping


@pytest.mark.parametrize(("name", "total"), [("1b", 3553), ("5b", 3875)])
def test_hf_rules_reproduce_the_full_key_maps_both_ways(name: str, total: int) -> None:
    mapping = _keymap(name)
    assert len(mapping) == total
    wrong_forward = [(p, k) for (p, k), hf in mapping.items() if original_key_to_hf(p, k) != hf]
    wrong_back = [hf for (p, k), hf in mapping.items() if hf_key_to_original(hf) != (p, k)]
    assert wrong_forward == [] and wrong_back == []
    # splitting a whole HF state dict (downs_t read from its keys) gives every part's original keys
    parts = split_hf_state_dict({hf: torch.empty(0, device="meta") for hf in mapping.values()})
    assert {part: set(keys) for part, keys in parts.items()} == {
        part: {k for (p, k) in mapping if p == part} for part in {p for p, _ in mapping}
    }


def test_hf_priors_are_numbered_top_first() -> None:
    assert original_key_to_hf("prior_level_2", "prior.x_out.weight") == "priors.0.prior.fc_proj_out.weight"
    assert original_key_to_hf("prior_level_0", "prior.x_out.weight") == "priors.2.prior.fc_proj_out.weight"
    assert hf_key_to_original("priors.1.prior.pos_emb.pos_emb") == (PRIOR_PARTS[1], "prior.pos_emb.pos_emb")


def test_hf_unknown_keys_are_refused() -> None:
    with pytest.raises(CheckpointError, match=r"unexpected key 'lm\.weight'"):
        hf_key_to_original("lm.weight")
    with pytest.raises(CheckpointError, match=r"unexpected key 'priors\.3\.x'"):
        hf_key_to_original("priors.3.x")
    with pytest.raises(CheckpointError, match="unknown checkpoint part 'prior_level_9'"):
        original_key_to_hf("prior_level_9", "x")


def _write_hf_shards(state: dict[str, torch.Tensor], root: Path, shards: int, index: bool) -> list[Path]:
    hf = {original_key_to_hf("vqvae", k): v for k, v in state.items()}
    keys = list(hf)
    root.mkdir(parents=True, exist_ok=True)
    files, weight_map = [], {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: hf[k] for k in keys[i::shards]}
        torch.save(part, root / name)  # HF shards are bare state dicts
        weight_map.update({k: name for k in part})
        files.append(root / name)
    if index:
        (root / "pytorch_model.bin.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map})
        )
    return files


@pytest.mark.parametrize("index", [True, False])
def test_sharded_hf_checkpoint_loads_into_the_model(tiny_vqvae: VQVAE, tmp_path: Path, index: bool) -> None:
    _write_hf_shards(tiny_vqvae.state_dict(), tmp_path / "hf", shards=3, index=index)
    parts = load_hf_checkpoint(tmp_path / "hf")
    assert list(parts) == ["vqvae"]
    model = load_state_dict_into(fresh_vqvae(), parts["vqvae"])
    assert_same_state(model.state_dict(), tiny_vqvae.state_dict())


def test_hf_checkpoint_with_a_missing_shard_is_refused(tiny_vqvae: VQVAE, tmp_path: Path) -> None:
    files = _write_hf_shards(tiny_vqvae.state_dict(), tmp_path / "hf", shards=3, index=False)
    files[1].unlink()
    with pytest.raises(CheckpointError, match=r"lacks shard\(s\) pytorch_model-00002-of-00003\.bin"):
        load_hf_checkpoint(tmp_path / "hf")


def test_hf_directory_without_weights_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="holds no HuggingFace weights"):
        load_hf_checkpoint(tmp_path)
