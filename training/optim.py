"""The optimizer of a recipe, with upstream's per-parameter learning rates and weight decays."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from segzoo.training.recipe import OptimizerSpec, Recipe
from segzoo.training.recipes import upstream_parameter_name

# mmcv 1.x DefaultOptimizerConstructor: is_norm = isinstance(module, (_BatchNorm, _InstanceNorm, GroupNorm, LayerNorm)).
MMCV_NORMS = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class ParameterSetting:
    """One parameter's multipliers of the base rate and base weight decay."""

    name: str
    lr_mult: float
    decay_mult: float


def _owned_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Module, nn.Parameter]]:
    """``(full name, owning module, parameter)`` in ``named_modules`` order, each parameter once."""
    seen: set[int] = set()
    for prefix, module in model.named_modules():
        for local, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            yield (f"{prefix}.{local}" if prefix else local), module, param


def _mmcv_setting(spec: OptimizerSpec, module: nn.Module, upstream: str) -> tuple[float, float]:
    """mmcv 1.x ``DefaultOptimizerConstructor.add_params`` for one parameter: (lr_mult, decay_mult)."""
    # mmcv matches ``f"{prefix}.{name}"``: a parameter of the root module is seen as ".name".
    matched = upstream if "." in upstream else f".{upstream}"
    # sorted(sorted(keys), key=len, reverse=True): longest first, ties alphabetical; the first hit wins.
    for rule in sorted(sorted(spec.custom_keys, key=lambda r: r.key), key=lambda r: len(r.key), reverse=True):
        if rule.key in matched:
            return rule.lr_mult, rule.decay_mult
    local = upstream.rsplit(".", 1)[-1]
    is_norm = isinstance(module, MMCV_NORMS)
    lr_mult = spec.bias_lr_mult if local == "bias" and not is_norm else 1.0
    if is_norm:
        return lr_mult, spec.norm_decay_mult
    if isinstance(module, nn.Conv2d) and module.in_channels == module.groups:
        return lr_mult, spec.dwconv_decay_mult
    if local == "bias":
        return lr_mult, spec.bias_decay_mult
    return lr_mult, 1.0


def _detectron2_setting(spec: OptimizerSpec, upstream: str) -> tuple[float, float]:
    """detectron2 ``build_optimizer`` (commit 83670010) for one parameter by its upstream name, as multipliers of
    the base rate and decay."""

    def decay_mult(weight_decay: float) -> float:
        return weight_decay / spec.weight_decay if spec.weight_decay else 0.0

    if upstream.endswith(("norm.weight", "norm.bias")):
        return 1.0, decay_mult(spec.weight_decay_norm)
    if upstream.endswith(".bias"):
        bias_decay = spec.weight_decay if spec.weight_decay_bias is None else spec.weight_decay_bias
        return spec.bias_lr_factor, decay_mult(bias_decay)
    return 1.0, 1.0


def _unwrapped(model: nn.Module) -> nn.Module:
    """The model inside a DDP-style ``module`` wrapper, as mmcv's constructor looks through it."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def _settings(model: nn.Module, recipe: Recipe) -> Iterator[tuple[ParameterSetting, nn.Parameter]]:
    """Every trainable parameter of ``model`` with the multipliers upstream's rules give it.

    The rules see the upstream name of each parameter (see
    :func:`~segzoo.training.recipes.upstream_parameter_name`) and the type of
    the module that owns it; a ``module.`` wrapper is looked through.
    """
    spec = recipe.optimizer
    for name, module, param in _owned_parameters(_unwrapped(model)):
        upstream = upstream_parameter_name(recipe, name)
        if spec.param_rules == "mmcv":
            lr_mult, decay_mult = _mmcv_setting(spec, module, upstream)
        else:
            lr_mult, decay_mult = _detectron2_setting(spec, upstream)
        yield ParameterSetting(name, lr_mult, decay_mult), param


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer, one parameter group per distinct (lr, weight decay).

    Each group carries ``lr_mult``/``decay_mult`` (its multipliers of the
    recipe's base rate and decay) and ``param_names``; the scheduler scales
    each group's own base rate.
    """
    spec = recipe.optimizer
    groups: dict[tuple[float, float], dict] = {}
    for setting, param in _settings(model, recipe):
        group = groups.setdefault(
            (setting.lr_mult, setting.decay_mult),
            {
                "params": [],
                "param_names": [],
                "lr": spec.lr * setting.lr_mult,
                "weight_decay": spec.weight_decay * setting.decay_mult,
                "lr_mult": setting.lr_mult,
                "decay_mult": setting.decay_mult,
            },
        )
        group["params"].append(param)
        group["param_names"].append(setting.name)
    param_groups = list(groups.values())
    if spec.type == "SGD":
        return torch.optim.SGD(param_groups, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    if spec.type == "AdamW":
        return torch.optim.AdamW(
            param_groups, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay
        )
    raise ValueError(f"recipe {recipe.name!r}: unknown optimizer type {spec.type!r}; expected 'SGD' or 'AdamW'")
