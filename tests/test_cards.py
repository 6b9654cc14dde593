"""Generated documentation stays in step with the registry."""
from segzoo.cards import expected_files
from tests.conftest import REPO


def test_model_cards_and_readme_table_are_current():
    stale = [str(p.relative_to(REPO)) for p, text in expected_files(REPO).items()
             if not p.is_file() or p.read_text() != text]
    assert not stale, f"run `make docs` (python -m segzoo.cards --write); stale: {stale}"


def test_no_orphan_model_cards():
    generated = {p.name for p in expected_files(REPO) if p.parent.name == "model_cards"}
    assert {p.name for p in (REPO / "model_cards").iterdir()} == generated
