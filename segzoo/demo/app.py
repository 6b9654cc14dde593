"""The demo page: pick an entry and a precision, drop an image, see the overlay, labels, class areas, card and time.

The segmenting event is also the API endpoint ``/segment``: ``gradio_client.Client(url).predict(
handle_file(image), api_name="/segment")`` returns the overlay and the label image (the entry and precision
default to the page's).
"""

from __future__ import annotations

import errno
import html
import socket
from collections.abc import Sequence
from pathlib import Path

from segzoo.demo.session import (
    PRECISIONS,
    DemoInputError,
    DemoModels,
    Segmentation,
    card_markdown,
    read_upload,
    segment,
)
from segzoo.weights.errors import WeightsError

try:
    import gradio as gr
except ModuleNotFoundError as err:
    if err.name != "gradio":
        raise
    raise ImportError('segzoo demo needs Gradio, which the demo extra installs: pip install "segzoo[demo]"') from None

# The largest upload the server accepts, in bytes: a 16-megapixel photo as a PNG fits.
MAX_UPLOAD_BYTES = 100 * 2**20
# System fonts: the default theme's web fonts would be fetched from the internet, which the page must not need.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
CSS = """
#legend ul { list-style: none; padding: 0; margin: 0; }
#legend li { display: flex; align-items: center; gap: 0.5em; }
#legend .swatch { width: 1em; height: 1em; border: 1px solid #000; display: inline-block; }
"""
AREA_HEADERS = ["class", "name", "pixels", "share (%)"]


def _user_error(message: str) -> gr.Error:
    """An error shown on the page (and to API clients) as it is, without a traceback in the server's log."""
    return gr.Error(html.escape(message), duration=None, print_exception=False)


def _uploaded_file(payload) -> tuple[str, str]:
    """The server-side path of an uploaded image and the name it had on the user's machine."""
    if payload is None:
        raise _user_error("no image: drop one on the page (or pass handle_file(path) to the API)")
    fields = payload if isinstance(payload, dict) else payload.model_dump()
    path = fields.get("path")
    if not path:
        raise _user_error("the upload holds no file; drop the image again")
    return path, fields.get("orig_name") or Path(path).name


def legend_html(result: Segmentation) -> str:
    """The classes present, largest first: colour swatch, name and share, as the overlay's legend lists them."""
    rows = "".join(
        f'<li><span class="swatch" style="background: rgb{area.color}"></span>'
        f'<span class="name">{html.escape(area.name)}</span> <span class="share">{100 * area.fraction:.1f}%</span></li>'
        for area in result.areas
    )
    return f"<ul>{rows}</ul>"


def build_app(models: DemoModels, entries: Sequence[str], initial: str) -> gr.Blocks:
    """The page for ``entries`` (a dropdown) starting at ``initial``; ``models`` loads and keeps them."""

    def show_card(name: str) -> str:
        try:
            return card_markdown(models.entry(name))
        except (LookupError, WeightsError) as err:
            raise _user_error(str(err)) from None

    def run_segment(image, model: str, precision: str):
        path, shown_name = _uploaded_file(image)
        try:
            info = models.entry(model).info
            picture = read_upload(path, shown_name, info)
            result = segment(models.model(model, precision), picture)
        except (DemoInputError, LookupError, WeightsError) as err:
            raise _user_error(str(err)) from None
        except ValueError as err:  # an image the entry's pipeline or model cannot take: too small, too elongated
            raise _user_error(f"{shown_name}: {err}") from None
        timing = (
            f"Segmented {picture.width}x{picture.height} pixels in **{result.seconds:.2f} s** "
            f"({precision}: {PRECISIONS[precision]}; on {models.device})."
        )
        rows = [[a.index, a.name, a.pixels, round(100 * a.fraction, 2)] for a in result.areas]
        # The details go to the page in a second step, so that the API returns the two images alone
        return result.overlay, result.labels, (legend_html(result), rows, timing)

    def show_details(details: tuple[str, list[list], str]) -> tuple[str, list[list], str]:
        return details

    # delete_cache: uploads and results older than an hour are removed every ten minutes, and all at shutdown
    with gr.Blocks(title="segzoo demo", analytics_enabled=False, delete_cache=(600, 3600)) as app:
        gr.Markdown("# segzoo: try a model\nPick an entry, drop an image, press **Segment**.")
        with gr.Row():
            with gr.Column():
                entry = gr.Dropdown(list(entries), value=initial, label="Model")
                precision = gr.Radio(list(PRECISIONS), value="fp32", label="Precision", elem_id="precision")
                image = gr.Image(type="filepath", sources=["upload", "clipboard"], label="Image", elem_id="image")
                run = gr.Button("Segment", variant="primary", elem_id="segment")
                card = gr.Markdown(show_card(initial), elem_id="card")
            with gr.Column():
                overlay = gr.Image(type="pil", format="png", label="Overlay", interactive=False, elem_id="overlay")
                legend = gr.HTML(label="Classes present", elem_id="legend")
                timing = gr.Markdown(elem_id="timing")
                labels = gr.Image(type="pil", format="png", label="Labels", interactive=False, elem_id="labels")
                areas = gr.Dataframe(headers=AREA_HEADERS, label="Area per class", interactive=False, elem_id="areas")
        details = gr.State()
        entry.change(show_card, inputs=entry, outputs=card, api_visibility="private")
        # Not preprocessed: Gradio would open the upload with PIL itself; read_upload does, within the page's limits.
        run.click(
            run_segment,
            inputs=[image, entry, precision],
            outputs=[overlay, labels, details],
            api_name="segment",
            preprocess=False,
        ).success(show_details, inputs=details, outputs=[legend, areas, timing], api_visibility="private")
    return app


def free_port(host: str) -> int:
    """A port on ``host`` that no server listens on now."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as err:
        raise OSError(f"cannot serve on {host!r}: no such host here ({err.strerror}); try --host 127.0.0.1") from None


def check_port(host: str, port: int) -> None:
    """Nothing when a server can listen on ``host:port``; an error saying what to do when not (busy, no such host)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: a closed port is free
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise OSError(
                    f"port {port} on {host} is in use (another server, or a demo already running?): "
                    f"pass --port with another number, or --port 0 for any free one"
                ) from None
            raise OSError(f"cannot serve on {host}:{port}: {err.strerror or err}") from None


def start(app: gr.Blocks, host: str, port: int, quiet: bool = False) -> str:
    """Serve ``app`` on ``host:port`` (0: any free port) in the background; returns its URL."""
    port = port or free_port(host)
    check_port(host, port)
    app.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=True,
        show_error=True,
        ssr_mode=False,
        quiet=quiet,
        max_file_size=MAX_UPLOAD_BYTES,
        theme=THEME,
        css=CSS,
    )
    return app.local_url
