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


def test_cards_render_what_the_detectron2_and_glore_entries_need():
    from segzoo.cards import render_model_card, render_models_table
    from segzoo.registry import model_info

    emanet = render_model_card(model_info("emanet_r50_cityscapes"))
    assert "shortest edge resized to 1024, longest at most 2048 (detectron2 ResizeShortestEdge)" in emanet
    assert "34,780,883 exactly" in emanet and "FLOPs | not reported" in emanet
    assert "train time (s/iter) 0.81, inference time (s/im) 0.11, train mem (GB) 11.22" in emanet
    assert "extraction code `x2d5`" in emanet and "save it as `emanet_r50_cityscapes.pth`" in emanet
    assert 'checkpoint_path="emanet_r50_cityscapes.pth"' in emanet and "pretrained=True" not in emanet
    assert '"split": "validation"' in emanet and "detectron2 SemSegEvaluator as of 2019" in emanet
    glore = render_model_card(model_info("glore_r50_fcn_cityscapes"))
    assert '"split": "test"' in glore and "test set, evaluation server" in glore
    assert "tar archive" in glore and "Assumed: the GloRe unit sits on the res5 output" in glore
    assert "Checkpoint layout unverified" in glore and "40,000 iterations, batch 8" in glore
    assert "are not published" in glore and "evident intent" in glore
    table = render_models_table()
    assert "| 34.78 (counted) | - |" in table and "(test set, evaluation server)" in table
