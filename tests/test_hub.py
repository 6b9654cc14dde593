"""torch.hub entry points, generated from the registry."""

import importlib.util
import inspect

import torch

import segzoo
from tests.conftest import REPO


def _hub_entry_points() -> list[str]:
    if "source" in inspect.signature(torch.hub.list).parameters:
        return torch.hub.list(str(REPO), source="local")
    # This torch's hub.list only takes GitHub repos; apply its rule to the local hubconf.
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [name for name in dir(module) if callable(getattr(module, name)) and not name.startswith("_")]


def test_every_name_and_alias_is_an_entry_point():
    assert sorted(_hub_entry_points()) == sorted([*segzoo.list_models(), *segzoo.list_aliases()])


def test_hub_load_builds_the_model():
    model = torch.hub.load(str(REPO), "moganet_s_fpn", source="local", pretrained=False)
    assert model.info.name == "moganet_s_fpn_ade20k" and not model.training


def test_entry_point_docstrings_come_from_the_registry():
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.moganet_s_fpn.__doc__ == segzoo.model_info("moganet_s_fpn").summary
    assert "torch" in module.dependencies
