"""``segzoo demo``: a page to try any registry entry in the browser (Gradio, from the ``demo`` extra)."""

from __future__ import annotations

import argparse

from segzoo.cli.options import add_checkpoint
from segzoo.cli.predict import DEFAULT_MODEL

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535 (0: any free one)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535, got {text!r}")
    return value


def _demo(args: argparse.Namespace) -> int:
    import segzoo

    name = segzoo.model_info(args.model).name  # an unknown name fails before anything is loaded
    from segzoo.demo.app import build_app, check_port, start
    from segzoo.demo.session import DemoModels

    if args.port:
        check_port(args.host, args.port)  # a busy port is reported before the model loads
    checkpoints = {name: args.checkpoint} if args.checkpoint else {}
    models = DemoModels(checkpoints, device=args.device, allow_unsafe_pickle=args.allow_unsafe_pickle)
    loaded = models.entry(name)
    print(f"segzoo demo: {name} with {loaded.weights.kind} weights: {loaded.weights.detail}")
    app = build_app(models, segzoo.list_models(), name)
    url = start(app, args.host, args.port, quiet=True)  # quiet: Gradio's hint about share links does not apply here
    print(f"segzoo demo: serving {url} (Ctrl-C stops it)", flush=True)
    app.block_thread()
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "demo",
        help="serve a page to try any model in the browser: drop an image, see the overlay, labels and class areas",
        description=(
            "Serve a Gradio page: pick an entry and a precision, drop an image, see the overlay with its legend, the "
            "label image, the area per class, the model's summary and the time taken; the page says which weights "
            "are loaded (published, a local file, or random when none are available). The segmenting function is "
            'also an API: gradio_client.Client(URL).predict(handle_file(IMAGE), api_name="/segment"). '
            'Needs the demo extra: pip install "segzoo[demo]".'
        ),
    )
    p.add_argument("-m", "--model", default=DEFAULT_MODEL, help=f"entry shown first (default {DEFAULT_MODEL})")
    add_checkpoint(p)
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to serve on (default {DEFAULT_HOST}: this machine)")
    p.add_argument(
        "--port", type=port_number, default=DEFAULT_PORT, help=f"port to serve on (default {DEFAULT_PORT}; 0: any free)"
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.set_defaults(run=_demo)
