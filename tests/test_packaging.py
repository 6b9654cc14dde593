"""Packaging: every subpackage ships, training/ installs as segzoo.training, the lock covers the dev environment."""

import configparser
import re

import setuptools
from packaging.utils import canonicalize_name

from tests.conftest import REPO


def _options() -> configparser.SectionProxy:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    return config["options"]


def test_every_subpackage_is_listed():
    listed = set(_options()["packages"].split())
    library = {f"segzoo.{name}" for name in setuptools.find_packages(REPO / "segzoo")} | {"segzoo"}
    training = {f"segzoo.training.{name}" for name in setuptools.find_packages(REPO / "training")}
    assert listed == library | training | {"segzoo.training"}


def test_training_folder_is_mapped_into_segzoo():
    assert _options()["package_dir"].split() == ["segzoo.training", "=", "training"]


LOCK = REPO / "requirements" / "dev.txt"
# Pinned by the Makefile's TORCH instead, so that any build of that torch (CPU or CUDA) fits the lock.
NOT_LOCKED = re.compile(r"torch|triton|nvidia-.*|cuda-.*")


def _requirement_names(lines: str) -> set[str]:
    names = (re.match(r"[A-Za-z0-9_.-]+", line.strip()) for line in lines.splitlines() if line.strip())
    return {canonicalize_name(name.group()) for name in names if name}


def _locked() -> dict[str, str]:
    pins = (line.split("#")[0].strip() for line in LOCK.read_text().splitlines())
    return {canonicalize_name(name): version for name, version in (pin.split("==") for pin in pins if pin)}


def test_lock_file_pins_every_requirement_of_the_dev_environment():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    wanted = _requirement_names(config["options"]["install_requires"])
    wanted |= _requirement_names(config["options.extras_require"]["dev"])
    locked = _locked()
    missing = {name for name in wanted if not NOT_LOCKED.fullmatch(name)} - set(locked)
    assert not missing, f"run `make lock`: {LOCK.name} lacks {sorted(missing)}"


def test_lock_file_leaves_torch_and_its_cuda_wheels_to_the_makefile():
    assert not [name for name in _locked() if NOT_LOCKED.fullmatch(name)]
    assert "--index-url" not in LOCK.read_text() and "--find-links" not in LOCK.read_text()
