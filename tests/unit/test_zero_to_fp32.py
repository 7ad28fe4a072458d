"""zero_to_fp32 on hand-built checkpoint folders: the shard arithmetic against plain torch, any world size."""
import os

import pytest
import torch

from deepspeed.utils import zero_to_fp32 as z2f

SHAPES = {"a.weight": (5, 3), "a.bias": (5,), "b.weight": (7,)}  # 15, 5, 7 elements: uneven on purpose


def _reference(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(*s, generator=g) for n, s in SHAPES.items()}


def _shard(t: torch.Tensor, world: int, rank: int) -> torch.Tensor:
    size = -(-t.numel() // world)
    flat = torch.zeros(size * world)
    flat[:t.numel()] = t.reshape(-1)
    return flat[rank * size:(rank + 1) * size].clone()


def _write_stage3(folder, world: int, full, frozen_name: str = "b.weight", tag: str = "global_step1"):
    """The stage-3 layout: trainable a.* in one group, b.weight frozen (16-bit shards), a buffer, a tied alias."""
    ckpt = folder / tag
    ckpt.mkdir(parents=True)
    trainable = [n for n in SHAPES if n != frozen_name]
    buf = torch.arange(4, dtype=torch.int64)
    for r in range(world):
        model = {"module": {"pos_ids": buf}, "param_shapes": [{n: torch.Size(SHAPES[n]) for n in trainable}],
                 "frozen_param_shapes": {frozen_name: torch.Size(SHAPES[frozen_name])},
                 "frozen_param_fragments": {frozen_name: _shard(full[frozen_name], world, r).bfloat16()},
                 "shared_params": {"head.weight": "a.weight"}, "ds_shard_world": world, "dp_world_size": world}
        torch.save(model, ckpt / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt")
        master = torch.cat([_shard(full[n], world, r) for n in trainable])
        optim = {"optimizer_state_dict": {"fp32_flat_groups": [master], "partition_count": world,
                                          "optimizer_state_dict": {"state": {0: {"exp_avg": master * 0}}}}}
        torch.save(optim, ckpt / f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
    (folder / "latest").write_text(tag)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_stage3_rebuilds_full_tensors_for_any_world(tmp_path, world):
    full = _reference()
    _write_stage3(tmp_path, world, full)
    state = z2f.get_fp32_state_dict_from_zero_checkpoint(str(tmp_path))
    assert set(state) == {"a.weight", "a.bias", "b.weight", "head.weight", "pos_ids"}
    assert torch.equal(state["a.weight"], full["a.weight"]) and torch.equal(state["a.bias"], full["a.bias"])
    # the frozen parameter went through bf16 shards
    assert state["b.weight"].dtype == torch.float32
    assert torch.equal(state["b.weight"], full["b.weight"].bfloat16().float())
    assert state["head.weight"] is state["a.weight"]
    assert state["pos_ids"].dtype == torch.int64
    assert "b.weight" not in z2f.get_fp32_state_dict_from_zero_checkpoint(str(tmp_path), exclude_frozen_parameters=True)


def test_missing_rank_file_is_reported(tmp_path):
    _write_stage3(tmp_path, 3, _reference())
    os.remove(tmp_path / "global_step1" / "zero_pp_rank_1_mp_rank_00_model_states.pt")
    with pytest.raises(FileNotFoundError, match="missing"):
        z2f.get_fp32_state_dict_from_zero_checkpoint(str(tmp_path))


def _write_stage2(folder, world: int, full, bucket_names, tag: str = "step9"):
    """Stages 1/2: buckets padded to a multiple of `world`; rank r's master = its chunk of every bucket."""
    ckpt = folder / tag
    ckpt.mkdir(parents=True)
    layout, chunks_per_rank, offset = [], [[] for _ in range(world)], 0
    for names in bucket_names:
        flat = torch.cat([full[n].reshape(-1) for n in names])
        padded = -(-flat.numel() // world) * world
        buf = torch.zeros(padded)
        buf[:flat.numel()] = flat
        chunk = padded // world
        offsets = [sum(full[m].numel() for m in names[:i]) for i in range(len(names))]
        layout.append({"names": list(names), "shapes": [tuple(full[n].shape) for n in names], "offsets": offsets,
                       "padded_numel": padded, "chunk_numel": chunk, "partition_offset": offset})
        for r in range(world):
            chunks_per_rank[r].append(buf[r * chunk:(r + 1) * chunk])
        offset += chunk
    module = {n: t.half() for n, t in full.items()}  # 16-bit module copy; the masters must win
    module["head.weight"] = module["a.weight"]
    torch.save({"module": module, "param_shapes": [{n: torch.Size(SHAPES[n]) for n in SHAPES}],
                "frozen_param_shapes": {}, "shared_params": {"head.weight": "a.weight"}},
               ckpt / "mp_rank_00_model_states.pt")
    for r in range(world):
        torch.save({"optimizer_state_dict": {"fp32_flat_groups": [torch.cat(chunks_per_rank[r])],
                                             "partition_count": world}, "param_layout": [layout]},
                   ckpt / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")


@pytest.mark.parametrize("world", [2, 3])
def test_stage2_undoes_bucket_interleaving(tmp_path, world):
    full = _reference(1)
    _write_stage2(tmp_path, world, full, [["a.weight"], ["a.bias", "b.weight"]])
    state = z2f.get_fp32_state_dict_from_zero_checkpoint(str(tmp_path), tag="step9")
    for name, value in full.items():
        assert state[name].dtype == torch.float32 and torch.equal(state[name], value), name
    assert state["head.weight"] is state["a.weight"]


def test_convert_writes_torch_and_safetensors(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    full = _reference()
    _write_stage3(tmp_path / "ckpt", 2, full)
    z2f.convert_zero_checkpoint_to_fp32_state_dict(str(tmp_path / "ckpt"), str(tmp_path / "out.bin"))
    saved = torch.load(tmp_path / "out.bin", weights_only=True)
    assert torch.equal(saved["a.weight"], full["a.weight"]) and "head.weight" in saved
    z2f.main([str(tmp_path / "ckpt"), str(tmp_path / "out.st"), "--safe_serialization"])
    st = safetensors.load_file(str(tmp_path / "out.st"))
    assert "head.weight" not in st  # tied alias dropped: safetensors cannot hold shared tensors
    assert torch.equal(st["a.weight"], full["a.weight"])


def test_load_state_dict_from_zero_checkpoint_fills_a_model(tmp_path):
    full = _reference()
    _write_stage3(tmp_path, 2, full, frozen_name="a.bias")
    model = torch.nn.Module()
    model.a = torch.nn.Linear(3, 5)
    model = z2f.load_state_dict_from_zero_checkpoint(model, str(tmp_path))
    assert torch.equal(model.a.weight.detach(), full["a.weight"])
    assert torch.equal(model.a.bias.detach(), full["a.bias"].bfloat16().float())
