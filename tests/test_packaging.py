"""The package list in setup.cfg: every subpackage ships, and training/ installs as segzoo.training."""
import configparser

import setuptools

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
