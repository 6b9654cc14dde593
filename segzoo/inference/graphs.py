"""A model's forward replayed from CUDA graphs, the default of ``predict`` and ``evaluate`` at batch 1 on a GPU.

At batch 1 a GPU forward is bound by kernel launches rather than arithmetic; a CUDA graph launches the whole forward
at once. :class:`GraphedForward` runs the first forward of each input signature (shape, strides, dtype, autocast)
eagerly, which also builds the model's per-size caches (position embeddings, EurNet's graph plans), captures the
second as a graph and replays it from then on. Two things keep a replay equal to the eager forward:

- whatever the captured kernels read outside the graph's own memory (weights, the per-size caches a model may later
  drop, autocast's casts) is held for the graph's life, so a graph never reads memory that was freed and reused;
- graphs belong to one state of the model: :func:`graphed_forward` starts afresh when a parameter or buffer has
  been replaced (``model.to``) or written in place (``load_state_dict``) since they were captured.

A forward that cannot be captured (it reads a value back to the host, or takes a host tensor) is refused by CUDA
while capturing; the model then runs eagerly, with one warning.
"""

from __future__ import annotations

import itertools
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

GRAPH_DEVICES = ("cuda",)
"""Device types whose forwards are captured (tests on a machine without a GPU add ``cpu`` with a stand-in capture)."""
MAX_GRAPHS = 8
"""Graphs kept per model, the least recently used dropped first: each holds its input and output; their
intermediate memory is one pool, shared. Sharing is safe in any replay order for graphs that never run at once and
never read each other's outputs: a lock serializes the replays, and each output is copied out before the next."""
MAX_SIGNATURES_SEEN = 256
"""Signatures remembered as seen once (run eagerly) before the memory of them starts afresh."""

Forward = Callable[[torch.Tensor], torch.Tensor]


def use_cuda_graphs(requested: bool | None, device: torch.device, batch_size: int) -> bool:
    """Whether to replay forwards from CUDA graphs: ``None`` (the default) means on a GPU at batch 1."""
    if requested is None:
        return device.type in GRAPH_DEVICES and batch_size == 1
    if requested and device.type not in GRAPH_DEVICES:
        raise ValueError(f"cuda_graphs=True needs the model on a CUDA device, and it is on {device}; leave it unset")
    return bool(requested)


@dataclass(frozen=True)
class CapturedForward:
    """One input signature's forward as a CUDA graph: copy the input in, replay, copy the output out."""

    graph: torch.cuda.CUDAGraph
    static_input: torch.Tensor
    static_output: torch.Tensor
    external: tuple[torch.Tensor, ...]
    """What the kernels read outside the graph's memory, held so that it is not freed while the graph lives."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.static_input.copy_(x)
        self.graph.replay()
        return self.static_output.clone()  # the next replay (of any graph sharing the pool) overwrites it


class _ExternalReads(TorchDispatchMode):
    """Records the tensors that ops read but no op under the mode produced: a captured graph's reads of memory
    that its pool does not own."""

    def __init__(self) -> None:
        super().__init__()
        self.produced: set[int] = set()
        self.external: dict[int, torch.Tensor] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for leaf in tree_leaves((args, kwargs)):
            if isinstance(leaf, torch.Tensor):
                address = leaf.untyped_storage().data_ptr()
                if address not in self.produced:
                    self.external.setdefault(address, leaf)
        out = func(*args, **kwargs)
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.produced.add(leaf.untyped_storage().data_ptr())
        return out


def capture(forward: Forward, x: torch.Tensor, pool: tuple | None) -> CapturedForward:
    """``forward`` at ``x``'s signature captured as a CUDA graph whose memory comes from ``pool`` (a new one if
    ``None``): warmed up on a side stream, captured, as ``torch.cuda.graph`` asks. Autocast's cast cache is off
    while capturing: a cast cached before the capture would be freed when the caller's autocast ends."""
    static_input = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device).copy_(x)
    autocast = torch.autocast(
        "cuda",
        dtype=torch.get_autocast_dtype("cuda"),
        enabled=torch.is_autocast_enabled("cuda"),
        cache_enabled=False,
    )
    side = torch.cuda.Stream(x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side), autocast:
        forward(static_input)
    torch.cuda.current_stream(x.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    reads = _ExternalReads()
    # "thread_local": a DataLoader's pin-memory thread may allocate host memory while this thread captures.
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"), autocast, reads:
        static_output = forward(static_input)
    return CapturedForward(graph, static_input, static_output, tuple(reads.external.values()))


def _signature(x: torch.Tensor) -> Hashable:
    """What a graph captured for ``x`` is valid for."""
    return (
        tuple(x.shape),
        x.stride(),
        x.dtype,
        x.device,
        torch.is_autocast_enabled("cuda"),
        torch.get_autocast_dtype("cuda"),
    )


def _model_state(model: nn.Module) -> tuple:
    """Where each parameter and buffer lives and how often it was written in place: graphs captured in one state
    replay the weights they read then."""
    return tuple(
        (t.data_ptr(), None if t.is_inference() else t._version)
        for t in itertools.chain(model.parameters(), model.buffers())
    )


class GraphedForward:
    """``model``'s forward, from the second call at an input signature on replayed from a CUDA graph.

    Eager where graphs do not apply: a model in training mode, gradients enabled, or a device not in
    :data:`GRAPH_DEVICES`.
    """

    def __init__(self, model: nn.Module, state: tuple, max_graphs: int = MAX_GRAPHS) -> None:
        self._model = weakref.ref(model)  # the model's entry in _RUNNERS holds this object: no cycle through it
        self.state = state
        self.max_graphs = max_graphs
        self.graphs: OrderedDict[Hashable, CapturedForward] = OrderedDict()
        self.refused: str | None = None
        """Why the model's forward cannot be captured, once CUDA refused it; then it runs eagerly."""
        self._seen: set[Hashable] = set()
        self._pool: tuple | None = None
        self._lock = threading.Lock()  # a replay's input, graph and output are one per signature: one thread at a time

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        model = self._model()
        if self.refused or model.training or torch.is_grad_enabled() or x.device.type not in GRAPH_DEVICES:
            return model(x)
        with self._lock:
            return self._run(model, x, _signature(x))

    def _run(self, model: nn.Module, x: torch.Tensor, signature: Hashable) -> torch.Tensor:
        if signature in self.graphs:
            self.graphs.move_to_end(signature)
            return self.graphs[signature](x)
        if signature not in self._seen:  # the first forward at a size builds its caches; capture the next
            if len(self._seen) >= MAX_SIGNATURES_SEEN:
                self._seen.clear()
            self._seen.add(signature)
            return model(x)
        try:
            captured = capture(model, x, self._pool)
        except RuntimeError as err:
            self.refused = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            name = getattr(getattr(model, "info", None), "name", type(model).__name__)
            warnings.warn(
                f"{name}: CUDA cannot capture this model's forward as a graph ({self.refused}); it runs eagerly "
                f"(pass cuda_graphs=False, or --no-cuda-graphs, to skip the attempt)",
                stacklevel=3,
            )
            return model(x)
        if self._pool is None:
            self._pool = captured.graph.pool()
        self.graphs[signature] = captured
        if len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)
        return captured(x)


_RUNNERS: weakref.WeakKeyDictionary[nn.Module, GraphedForward] = weakref.WeakKeyDictionary()


def graphed_forward(model: nn.Module) -> GraphedForward:
    """``model``'s :class:`GraphedForward`, kept with the model across calls while its weights stay as they were
    (checked here, once per ``predict``/``evaluate`` call: not on every forward)."""
    state = _model_state(model)
    runner = _RUNNERS.get(model)
    if runner is None or runner.state != state:
        runner = _RUNNERS[model] = GraphedForward(model, state)
    return runner


def forward_for(model: nn.Module, requested: bool | None, batch_size: int) -> Forward:
    """The callable that ``predict`` and ``evaluate`` run ``model``'s forward through: graphed or the model."""
    device = next(model.parameters()).device
    return graphed_forward(model) if use_cuda_graphs(requested, device, batch_size) else model
