"""Generated documentation stays in step with the registry and the zoo benchmark."""

import importlib.util

import pytest

from segzoo.cards import expected_files
from tests.conftest import REPO


def test_model_cards_and_readme_table_are_current():
    """What both generators write together: the library's cards and tables, then training's reproduction guides."""
    from segzoo.training.guide import generated_files

    stale = [
        str(p.relative_to(REPO))
        for p, text in generated_files(REPO).items()
        if not p.is_file() or p.read_text() != text
    ]
    assert not stale, (
        f"run `make docs` (python -m segzoo.cards --write, python -m segzoo.training.guide --write); stale: {stale}"
    )


def test_the_library_generator_writes_all_but_the_training_sections():
    """``python -m segzoo.cards`` alone: the README as committed (it leaves the training table), the cards as
    committed less their reproduction guide."""
    from segzoo.training.guide import reproduction_markdown

    for path, text in expected_files(REPO).items():
        committed = path.read_text()
        if path.parent.name == "model_cards":
            guide = reproduction_markdown(path.stem, heading="##") + "\n"
            assert committed.count(guide) == 1 and text == committed.replace(guide, ""), path.name
        else:
            assert text == committed, path.name


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


BENCHMARK_HEADER = (
    "name,family,resolution,mode,device,device_name,threads,images_per_s,latency_ms,peak_mem_mb,"
    "gflops,gflop_per_s,peak_fraction,speedup_vs_eager,bf16_max_err,bf16_rel_err,bf16_agreement,"
    "bf16_agreement_clear,note"
)


@pytest.fixture
def zoo_csv(tmp_path):
    """A small benchmark CSV in the layout benchmarks/zoo.py writes."""
    path = tmp_path / "benchmarks" / "zoo.csv"
    path.parent.mkdir()
    path.write_text(
        "\n".join(
            [
                BENCHMARK_HEADER,
                "moganet_xt_fpn_ade20k,moganet,512x512,eager,cpu,Xeon,2,2.50,400.0,310,25.1,62.8,0.10,1.00,,,,,",
                "moganet_xt_fpn_ade20k,moganet,512x512,fast,cpu,Xeon,2,3.50,285.7,280,25.1,88.0,0.14,1.40,,,,,",
                "moganet_xt_fpn_ade20k,moganet,256x256 sample,bf16,cpu,Xeon,1,,95.0,,,,,3.10,0.02,0.004,99.10%,"
                "100.00%,vs eager fp32",
                "regproxy_vit_ti16_ade20k,regproxy,512x512,bf16,cuda,,,,,,3.9,,,,,,,,needs a GPU",
            ]
        )
        + "\n"
    )
    return path


def test_cards_show_the_entrys_benchmark_rows_or_say_not_yet_measured(tmp_path, zoo_csv):
    (tmp_path / "README.md").write_text((REPO / "README.md").read_text())
    files = expected_files(tmp_path)
    moganet = files[tmp_path / "model_cards" / "moganet_xt_fpn_ade20k.md"]
    assert (
        "| eager | Xeon | 2 | 512x512 | 2.50 | 400.0 | 310 | 25.1 | 62.8 | 0.10 | 1.00 | - | - | - | - | - |" in moganet
    )
    assert (
        "| fast | Xeon | 2 | 512x512 | 3.50 | 285.7 | 280 | 25.1 | 88.0 | 0.14 | 1.40 | - | - | - | - | - |" in moganet
    )
    bf16 = "| bf16 | Xeon | 1 | 256x256 sample | - | 95.0 | - | - | - | - | 3.10 | 0.02 | 0.004 | 99.10% | 100.00% |"
    assert f"{bf16} vs eager fp32 |" in moganet
    regproxy = files[tmp_path / "model_cards" / "regproxy_vit_ti16_ade20k.md"]
    assert "| bf16 | cuda | - | 512x512 | - | - | - | 3.9 | - | - | - | - | - | - | - | needs a GPU |" in regproxy
    assert "Not yet measured" in files[tmp_path / "model_cards" / "emanet_r50_coco.md"]


def test_hub_cards_leave_the_benchmark_out_and_a_malformed_csv_is_named(tmp_path):
    from segzoo.cards import read_benchmark, render_model_card
    from segzoo.registry import model_info

    assert "Measured speed" not in render_model_card(model_info("moganet_s_fpn_ade20k"), hf_repo_id="org/repo")
    bad = tmp_path / "zoo.csv"
    bad.write_text("name,fps\nmoganet_s_fpn_ade20k,3\n")
    with pytest.raises(ValueError, match=r"zoo.csv: expected the columns name,family,.*got name,fps"):
        read_benchmark(bad)


def test_export_support_is_in_the_readme_table_and_each_card():
    from segzoo.cards import render_export_table, render_model_card
    from segzoo.registry import model_info

    table = render_export_table()
    eurnet = "| `eurnet_b_upernet_ade20k`, `eurnet_s_upernet_ade20k`, `eurnet_t_upernet_ade20k` |"
    assert f"{eurnet} fixed H/W (1) | fixed H/W (2) | fixed H/W (2) |" in table
    assert "- (2) EurNet's kNN graph is planned in Python from each stage's grid size" in table
    card = render_model_card(model_info("moganet_s_upernet_ade20k"))
    assert "| Export | ONNX: fixed height and width only; TorchScript: dynamic height and width (64 px or more)" in card
    assert "- Export (ONNX): UperNet's pyramid pooling" in card


def test_zoo_figure_draws_both_panels_deterministically(tmp_path, zoo_csv):
    pytest.importorskip("matplotlib")
    from segzoo.cards import read_benchmark

    spec = importlib.util.spec_from_file_location("figures", REPO / "benchmarks" / "figures.py")
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    rows = read_benchmark(zoo_csv)
    assert figures.cpu_latency_ms(rows["moganet_xt_fpn_ade20k"]) == 285.7  # the fast path where measured
    assert figures.cpu_latency_ms(rows["regproxy_vit_ti16_ade20k"]) is None
    first = figures.draw_zoo_figure(rows, tmp_path / "a.png").read_bytes()
    assert first.startswith(b"\x89PNG") and first == figures.draw_zoo_figure(rows, tmp_path / "b.png").read_bytes()
