"""``segzoo demo``: the page's work without Gradio, its API through gradio_client, and the page in a real browser.

The served tests run a random MogaNet-XT (offline: no published weights) on 127.0.0.1 at a free port. The browser
test needs Chromium and its driver (Debian: ``apt-get install chromium chromium-driver``) and Selenium
(``pip install selenium``); ``.ci/run`` installs them, and the test is skipped with that hint where they are missing.
"""

import shutil
import socket
import subprocess
import sys
import urllib.request
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

import segzoo
from segzoo.cli import main
from segzoo.datasets import dataset_metadata
from segzoo.demo import session
from segzoo.demo.session import DemoInputError, DemoModels, card_markdown, load_entry, read_upload
from tests.conftest import save_mmseg_checkpoint, synthetic_state_dict

ENTRY = "moganet_xt_fpn_ade20k"


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")


def _photo(path, size=(64, 48), seed=0):
    width, height = size
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def test_without_weights_the_model_is_random_and_says_so(offline):
    loaded = load_entry(ENTRY)
    assert loaded.weights.kind == "random" and not loaded.model.training
    card = card_markdown(loaded)
    assert "RANDOM" in card and "mean nothing" in card and f"segzoo download {ENTRY}" in card
    assert ENTRY in card and "arxiv.org/abs/2211.03295" in card


def test_published_weights_from_a_mirror_folder_are_named_as_such(tmp_path, monkeypatch, offline):
    filename = segzoo.model_info(ENTRY).weights[0].filename
    save_mmseg_checkpoint(tmp_path / filename, synthetic_state_dict(ENTRY))
    monkeypatch.setenv("SEGZOO_MIRROR", str(tmp_path))
    loaded = load_entry(ENTRY)
    assert loaded.weights.kind == "published" and "RANDOM" not in card_markdown(loaded)


def test_a_local_checkpoint_is_named_and_other_entries_stay_published_or_random(tmp_path, offline):
    checkpoint = save_mmseg_checkpoint(tmp_path / "mine.pth", synthetic_state_dict(ENTRY))
    models = DemoModels({"moganet_xt_fpn": checkpoint})  # an alias names the entry too
    loaded = models.entry(ENTRY)
    assert loaded.weights.kind == "local file" and str(checkpoint) in card_markdown(loaded)
    assert models.model(ENTRY, "fp32") is loaded.model
    assert models.model(ENTRY, "fast") is models.model(ENTRY, "fast") is not loaded.model
    assert models.entry("moganet_t_fpn").weights.kind == "random"


def test_segment_gives_overlay_labels_and_areas_of_the_classes_present(tmp_path, offline):
    model = load_entry(ENTRY).model
    image = read_upload(_photo(tmp_path / "p.png"), "p.png", model.info)
    result = session.segment(model, image)
    labels = np.asarray(result.labels)
    assert result.labels.mode == "P" and result.labels.size == (64, 48)
    assert result.overlay.width > 64 and result.overlay.height >= 48 and result.seconds > 0
    names = dataset_metadata("ADE20K")[0]
    assert {a.index for a in result.areas} == set(np.unique(labels).tolist())
    assert sum(a.pixels for a in result.areas) == labels.size
    assert [a.pixels for a in result.areas] == sorted((a.pixels for a in result.areas), reverse=True)
    assert all(a.name == names[a.index].strip() for a in result.areas)


def test_uploads_the_page_cannot_take_get_a_clear_message(tmp_path):
    info = segzoo.model_info(ENTRY)
    text = tmp_path / "upload123"
    text.write_text("not an image")
    with pytest.raises(DemoInputError, match=r"notes\.txt is not an image .*drop a PNG, JPEG"):
        read_upload(text, "notes.txt", info)
    big = _photo(tmp_path / "big.png", size=(40, 30))
    too_big = r"big\.png is 40x30 = 1,200 pixels; .* at most 1,000 \(as many as 31x31\).*segzoo predict"
    with pytest.raises(DemoInputError, match=too_big):
        read_upload(big, "big.png", info, max_pixels=1000)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(big.read_bytes()[:200])
    with pytest.raises(DemoInputError, match=r"cut\.png cannot be decoded"):
        read_upload(truncated, "cut.png", info)


def test_the_command_line_and_the_library_never_import_gradio():
    code = "import sys, segzoo; from segzoo.cli import build_parser; build_parser(); print('gradio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_demo_without_gradio_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now fails as if it were not installed
    monkeypatch.delitem(sys.modules, "segzoo.demo.app", raising=False)
    assert main(["demo", "--model", ENTRY]) == 1
    assert capsys.readouterr().err.strip() == (
        'segzoo: error: segzoo demo needs Gradio, which the demo extra installs: pip install "segzoo[demo]"'
    )


def test_demo_on_a_busy_port_says_so(capsys):
    pytest.importorskip("gradio", reason='the demo needs Gradio: pip install "segzoo[demo]"')
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["demo", "--model", ENTRY, "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"segzoo: error: port {port} on 127.0.0.1 is in use") and "--port 0" in err
    assert "Traceback" not in err


def test_demo_with_a_checkpoint_that_does_not_load_says_so_before_serving(tmp_path, capsys):
    pytest.importorskip("gradio", reason='the demo needs Gradio: pip install "segzoo[demo]"')
    bad = tmp_path / "notes.pth"
    bad.write_text("not a checkpoint")
    assert main(["demo", "--model", ENTRY, "--checkpoint", str(bad), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("segzoo: error:") and "notes.pth" in err and "Traceback" not in err


def test_demo_rejects_a_port_out_of_range(capsys):
    with pytest.raises(SystemExit) as done:
        main(["demo", "--port", "70000"])
    assert done.value.code == 1
    assert "expected a port number from 0 to 65535, got '70000'" in capsys.readouterr().err


@pytest.fixture
def served(offline):
    """The page for two entries, served on 127.0.0.1 at a free port: (URL, the models it serves)."""
    pytest.importorskip("gradio", reason='the demo needs Gradio: pip install "segzoo[demo]"')
    from segzoo.demo.app import build_app, start

    models = DemoModels({})
    app = build_app(models, [ENTRY, "moganet_t_fpn_ade20k"], ENTRY)
    url = start(app, "127.0.0.1", 0, quiet=True)
    yield url, models
    app.close()


def test_the_segment_api_returns_overlay_and_labels(served, tmp_path):
    client_module = pytest.importorskip("gradio_client", reason="pip install gradio-client")
    url, models = served
    client = client_module.Client(url, verbose=False)
    photo = client_module.handle_file(_photo(tmp_path / "p.png"))
    overlay, labels = client.predict(photo, model=ENTRY, precision="fast", api_name="/segment")
    with Image.open(overlay) as shown, Image.open(labels) as indexed:
        assert indexed.mode == "P" and indexed.size == (64, 48)
        assert shown.width > 64 and shown.height >= 48
        assert np.asarray(indexed).max() < 150
    assert models.entry(ENTRY).weights.kind == "random"

    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    with pytest.raises(client_module.exceptions.AppError, match=r"notes\.txt is not an image"):
        client.predict(client_module.handle_file(notes), api_name="/segment")
    huge = tmp_path / "huge.png"
    Image.new("RGB", (4100, 4100)).save(huge)  # a few kilobytes of file, 16.8 megapixels
    too_big = r"huge\.png is 4100x4100 = 16,810,000 pixels; the page takes at most 16,777,216"
    with pytest.raises(client_module.exceptions.AppError, match=too_big):
        client.predict(client_module.handle_file(huge), api_name="/segment")


BROWSER_HINT = (
    "the browser test needs Chromium, its driver and Selenium: apt-get install chromium chromium-driver "
    "(Debian) and pip install selenium, or run .ci/run, which installs them"
)


@pytest.fixture
def chromium():
    """A headless Chromium driven by Selenium, or a skip saying how to get one (before any page is served)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason=BROWSER_HINT)
    browser, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(BROWSER_HINT)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    flags = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000")
    for flag in flags:
        options.add_argument(flag)
    session = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    yield session
    session.quit()


def _fetch_image(src: str) -> Image.Image:
    with urllib.request.urlopen(src, timeout=30) as response:
        return Image.open(BytesIO(response.read()))


def test_the_page_segments_an_upload_in_a_real_browser(chromium, served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = served
    photo = _photo(tmp_path / "photo.png", size=(80, 60), seed=1)
    chromium.get(url)
    wait = WebDriverWait(chromium, 60)
    upload = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#image input[type=file]"))
    upload.send_keys(str(photo))
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#image img"))
    chromium.find_element(By.ID, "segment").click()
    legend = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#legend li .name"))
    listed = [item.text for item in legend]
    overlay = _fetch_image(chromium.find_element(By.CSS_SELECTOR, "#overlay img").get_attribute("src"))
    labels = _fetch_image(chromium.find_element(By.CSS_SELECTOR, "#labels img").get_attribute("src"))
    timing = chromium.find_element(By.ID, "timing").text
    card = chromium.find_element(By.ID, "card").text
    assert labels.size == (80, 60) and overlay.width > 80 and overlay.height >= 60
    names = dataset_metadata("ADE20K")[0]
    assert sorted(listed) == sorted(names[c].strip() for c in np.unique(np.asarray(labels)))
    assert "Segmented 80x60 pixels in" in timing and "RANDOM" in card
