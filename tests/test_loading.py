"""Models that receive weights: built on the meta device, then every tensor assigned from the checkpoint or
computed; a user's file is read into memory the model owns."""

import os
import subprocess
import sys
import zipfile

import pytest
import safetensors.torch
import torch
from torch import nn

import segzoo
from segzoo.families import build_architecture
from segzoo.weights import load_state_dict_strict
from segzoo.weights.checkpoint import _state_tensors
from tests.conftest import ONE_PER_ARCHITECTURE, REPO, save_mmseg_checkpoint, synthetic_state_dict

ENTRIES = [
    name if name in ONE_PER_ARCHITECTURE else pytest.param(name, marks=pytest.mark.slow)
    for name in segzoo.list_models()
]


def _meta_tensors(model: nn.Module) -> list[str]:
    """Names of the meta tensors a model holds: parameters, buffers and tensors kept as plain attributes."""
    found = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    for module_name, module in model.named_modules():
        for attr, value in vars(module).items():
            values = list(value.values()) if isinstance(value, dict) else value
            values = values if isinstance(values, list | tuple) else [values]
            if any(torch.is_tensor(v) and v.is_meta for v in values):
                found.append(f"{module_name}.{attr}")
    return found


@pytest.mark.parametrize("name", ENTRIES)
def test_no_meta_tensor_survives_a_load(tmp_path, name):
    path = save_mmseg_checkpoint(tmp_path / f"{name}.pth", synthetic_state_dict(name))
    info = segzoo.model_info(name)
    built = build_architecture(info.architecture, initialize=False, **info.arch_args, num_classes=info.num_classes)
    with pytest.warns(UserWarning, match="re-initialized"):
        new_classes = segzoo.create_model(name, checkpoint_path=path, num_classes=info.num_classes + 1)
    for model in (segzoo.create_model(name, checkpoint_path=path), new_classes):
        assert _meta_tensors(model) == []
        for key, param in model.named_parameters():
            assert param.dtype == torch.float32 and param.is_contiguous(), key
            assert param.requires_grad == built.get_parameter(key).requires_grad, key
    for classifier in new_classes.classifier_names():
        weight = new_classes.get_submodule(classifier).weight
        assert weight.isfinite().all() and weight.std() > 0, classifier  # a real initialization


class _WithDerivedBuffer(nn.Module):
    """A layer with a buffer computed from its configuration, which checkpoints do not hold."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(size, size)
        self.register_buffer("index", torch.empty(size, dtype=torch.long), persistent=False)
        self.init_non_persistent_buffers()

    def init_non_persistent_buffers(self) -> None:
        self.index.copy_(torch.arange(self.index.numel()).flip(0))


class _WithoutInit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("table", torch.arange(4), persistent=False)


def test_derived_buffers_are_computed_after_loading_onto_the_meta_device():
    weights = nn.Sequential(_WithDerivedBuffer(3)).state_dict()
    with torch.device("meta"):
        model = nn.Sequential(_WithDerivedBuffer(3))
    load_state_dict_strict(model, weights, "weights.pth")
    assert torch.equal(model[0].index, torch.tensor([2, 1, 0]))
    assert torch.equal(model[0].proj.weight, weights["0.proj.weight"])

    with torch.device("meta"):
        model = nn.Sequential(_WithoutInit())
    with pytest.raises(
        RuntimeError,
        match=r"meta device after loading weights.pth \(1\): 0.table; .*"
        r"init_non_persistent_buffers",
    ):
        load_state_dict_strict(model, {}, "weights.pth")


class _RenamesItsWeight(nn.Linear):
    """A layer whose state dict holds its weight under another name, as a checkpoint of an older layout might."""

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "kernel"] = self.weight if keep_vars else self.weight.detach()
        destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()


@pytest.mark.parametrize("customize", ["none", "save_to_state_dict", "state_dict_hook"])
def test_the_strict_load_expects_what_state_dict_lists(customize):
    """The load reads a model's tensors straight off its modules, but asks a module that changes what its state
    dict holds."""
    model = nn.Sequential(_RenamesItsWeight(2, 2) if customize == "save_to_state_dict" else nn.Linear(2, 2))
    model.append(nn.BatchNorm2d(2))
    model[1].register_buffer("scratch", torch.zeros(1), persistent=False)
    model.append(model[0])  # shared: listed under both names, as state_dict does
    if customize == "state_dict_hook":
        model[0]._register_state_dict_hook(lambda module, state, prefix, local: state.pop(prefix + "bias"))
    expected = model.state_dict(keep_vars=True)
    found = _state_tensors(model)
    assert list(found) == list(expected) and all(found[key] is expected[key] for key in expected)


def test_checkpoint_tensors_become_contiguous_float32_parameters(tmp_path):
    name = "moganet_xt_fpn_ade20k"
    state_dict = synthetic_state_dict(name)
    key = "decode_head.conv_seg.weight"
    state_dict[key] = state_dict[key].to(torch.float16).to(memory_format=torch.channels_last)
    path = save_mmseg_checkpoint(tmp_path / "half.pth", state_dict)
    param = segzoo.create_model(name, checkpoint_path=path).get_parameter(key)
    assert param.dtype == torch.float32 and param.is_contiguous() and param.requires_grad


# Load a user's file, rewrite it in place with other weights, truncate it: a model whose tensors were mapped
# onto the file would change, then die of SIGBUS, hence its own process.
_REWRITE_AND_TRUNCATE = """
import os, sys, torch, segzoo
path, other = sys.argv[1:]
model = segzoo.create_model("moganet_xt_fpn_ade20k", checkpoint_path=path)
before = {k: v.clone() for k, v in model.state_dict().items()}
with open(path, "r+b") as f:
    f.write(open(other, "rb").read())
assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "the model changed with the file"
os.truncate(path, 64)
assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "the model changed, truncated"
print("unchanged")
"""


def _save_zipped(path, state_dict) -> None:
    """A release zip holding an mmseg checkpoint, as some entries publish."""
    inner = path.with_suffix(".inner.pth")
    save_mmseg_checkpoint(inner, state_dict)
    with zipfile.ZipFile(path, "w") as zf:
        zf.write(inner, "release/model.pth")
    inner.unlink()


_SAVERS = {
    "torch-zip.pth": save_mmseg_checkpoint,
    "legacy.pth": lambda file, tensors: torch.save({"state_dict": tensors}, file, _use_new_zipfile_serialization=False),
    "safetensors": lambda file, tensors: safetensors.torch.save_file(tensors, file),
    "zip": _save_zipped,
}


@pytest.mark.parametrize("kind", _SAVERS)
def test_model_owns_its_tensors_when_the_user_file_changes(tmp_path, kind):
    name = "moganet_xt_fpn_ade20k"
    path, other = tmp_path / f"mine.{kind}", tmp_path / f"other.{kind}"
    for seed, file in enumerate((path, other)):
        _SAVERS[kind](file, synthetic_state_dict(name, seed=seed))  # MogaNet's published layout is segzoo's
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-c", _REWRITE_AND_TRUNCATE, str(path), str(other)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-2000:]}"
    assert run.stdout.strip() == "unchanged"
