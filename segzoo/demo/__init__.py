"""``segzoo demo``: a page to try any registry entry in the browser.

Two modules: :mod:`.session` does the work (loading an entry with whatever weights there are, reading an
uploaded image within the demo's limits, segmenting it, the class areas and the model's summary) and needs
nothing beyond segzoo; :mod:`.app` lays it out as a Gradio page, and is the only one that imports Gradio (the
``demo`` extra: ``pip install "segzoo[demo]"``).
"""
