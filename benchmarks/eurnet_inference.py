"""EurNet-T UperNet at 512x512 on the CPU: segzoo's dense graph against a port of upstream's scattered one.

The baseline (:func:`baseline_backbone`) runs the same parameters the way the upstream code is
structured: a full ``(N+1) x (N+1)`` kNN distance matrix filled window by window, edge lists for the
short, medium and long-range relations, messages gathered per edge and averaged with ``index_add_``,
the per-relation scale as a grouped ``Conv1d``, context maps concatenated and stacked. Baseline and
segzoo run interleaved in one process (timings) and each configuration once more in a fresh
process (peak RSS). Achieved GFLOP/s is ``torch.utils.flop_counter.FlopCounterMode``'s count of
segzoo's forward divided by the time. Weights are random: speed does not depend on them.

    python benchmarks/eurnet_inference.py [--runs 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
from itertools import product

import torch
import torch.nn.functional as F
from measure import interleaved_seconds, run_fresh
from torch.utils.flop_counter import FlopCounterMode

from segzoo.backbones.eurnet import EXCLUDED, EurNet, GatedRelationalMessagePassing, relative_position_term
from segzoo.training.run_log import peak_memory_mb

MODEL = "eurnet_t_upernet_ade20k"
BUILD_ONLY = "build"  # --peak-of: build the model, run nothing
EPS = 1e-10
_SPATIAL: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}


def _grid_neighbour_pairs(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(query, neighbour) index pairs of the 8-neighbourhood, built once per size as upstream caches them."""
    if (h, w) not in _SPATIAL:
        queries, neighbours = [], []
        for node in range(h * w):
            i, j = divmod(node, w)
            for di, dj in product((-1, 0, 1), repeat=2):
                if (di, dj) != (0, 0) and 0 <= i + di < h and 0 <= j + dj < w:
                    queries.append(node)
                    neighbours.append(node + di * w + dj)
        _SPATIAL[(h, w)] = torch.tensor(queries), torch.tensor(neighbours)
    return _SPATIAL[(h, w)]


def baseline_knn(x: torch.Tensor, h: int, w: int, k: int, window_length: int, dilation: int) -> torch.Tensor:
    """``(B, N, k)`` neighbour indices (1 + patch) from the full distance matrix, as upstream builds it."""
    b, n, c = x.shape
    x = F.normalize(x, p=2.0, dim=-1)
    dist = torch.full((b, n + 1, n + 1), EXCLUDED)
    inner = dist[:, 1:, 1:].view(b, h, w, h, w)
    grid = x.view(b, h, w, c)
    if h > w:
        wh, ww = window_length, math.ceil(window_length * (w / h))
    else:
        wh, ww = math.ceil(window_length * (h / w)), window_length
    for (dr, dc), (r0, c0) in product(product(range(dilation), range(dilation)), zip(range(0, h, wh), range(0, w, ww))):
        r1, c1 = min(r0 + wh, h), min(c0 + ww, w)
        rows, cols = len(range(r0 + dr, r1, dilation)), len(range(c0 + dc, c1, dilation))
        if rows <= 0 or cols <= 0:
            continue
        feats = grid[:, r0 + dr : r1 : dilation, c0 + dc : c1 : dilation].flatten(1, 2)
        sq = (feats**2).sum(-1)
        pairwise = sq[:, :, None] + sq[:, None, :] - 2.0 * (feats @ feats.transpose(1, 2))
        block = (r0 + dr, r1, c0 + dc, c1)
        view = inner[
            :, block[0] : r1 : dilation, block[2] : c1 : dilation, block[0] : r1 : dilation, block[2] : c1 : dilation
        ]
        view.zero_()
        view += pairwise.view(b, rows, cols, rows, cols)
        view += relative_position_term(c, rows, cols, dilation, x.device).view(1, rows, cols, rows, cols)
    diag = torch.arange(n + 1)
    dist[:, diag, diag] += EXCLUDED
    dist[:, :, 0] += EXCLUDED
    queries, neighbours = _grid_neighbour_pairs(h, w)
    dist[:, queries + 1, neighbours + 1] += EXCLUDED
    return torch.topk(-dist[:, 1:], k, dim=-1).indices


def baseline_edges(b: int, h: int, w: int, knn: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """Edge list ``(E, 3)``: source, target, relation; nodes numbered graph by graph, virtual node first."""
    n = h * w
    index = torch.arange(b * (n + 1)).view(b, n + 1)
    patches = index[:, 1:].reshape(b, h, w)
    edges = []
    for relation, (shift, dim) in enumerate(((1, 1), (-1, 1), (1, 2), (-1, 2))):
        src = patches.clone()
        src.select(dim, -1 if shift == 1 else 0).fill_(-1)
        src = torch.roll(src, shift, dim)
        keep = src.flatten() >= 0
        edges.append(
            torch.stack(
                [src.flatten()[keep], patches.flatten()[keep], torch.full((int(keep.sum()),), relation)], dim=-1
            )
        )
    relation = 4
    if knn is not None:
        src = knn + index[:, :1, None]
        dst = index[:, 1:, None].expand_as(src)
        edges.append(torch.stack([src.flatten(), dst.flatten(), torch.full((src.numel(),), relation)], dim=-1))
        relation += 1
    virtual = index[:, :1].expand(b, n)
    edges.append(torch.stack([virtual.flatten(), index[:, 1:].flatten(), torch.full((b * n,), relation)], dim=-1))
    edge_list = torch.cat(edges)
    order = torch.div(edge_list[:, 0], n + 1, rounding_mode="floor").argsort()
    return edge_list[order], relation + 1


def baseline_grmp(
    layer: GatedRelationalMessagePassing, x: torch.Tensor, h: int, w: int, edge_list: torch.Tensor
) -> torch.Tensor:
    """Gather per edge, ``index_add_`` per (node, relation), grouped Conv1d, concatenations and stacks."""
    b, length, c = x.shape
    r = layer.num_relation
    message = layer.message_linear(x)
    message[:, 0, :] = message[:, 1:, :].mean(1)
    flat = message.flatten(0, 1)
    per_edge = flat[edge_list[:, 0]]
    target = edge_list[:, 1] * r + edge_list[:, 2]
    weight = torch.ones(len(edge_list), 1)
    total = torch.zeros(b * length * r, c).index_add_(0, target, per_edge * weight)
    count = torch.zeros(b * length * r, 1).index_add_(0, target, weight)
    update = (total / (count + EPS)).view(b, -1, r * c).transpose(1, 2)
    update = F.gelu(layer.linear(update)).transpose(1, 2).reshape(b, -1, r, c)
    context = message[:, 1:, :].transpose(1, 2).view(b, c, h, w)
    contexts = []
    for context_layer in layer.context_layers:
        context = context_layer(context)
        contexts.append(torch.cat([message[:, :1, :], context.flatten(2).transpose(1, 2)], dim=1))
    update = torch.cat([update, torch.stack(contexts, dim=-2)], dim=-2)
    update = (update * layer.weight_linear(x).unsqueeze(-1)).sum(dim=2)
    return layer.self_loop(x) * layer.gate_linear(update)


def baseline_backbone(model: EurNet, images: torch.Tensor) -> list[torch.Tensor]:
    """The backbone's function computed the upstream way, with the same parameters."""
    embed = model.patch_embed
    x = embed.norm(
        embed.proj(F.pad(images, (0, -images.shape[3] % 4, 0, -images.shape[2] % 4))).flatten(2).transpose(1, 2)
    )
    b, _, c = x.shape
    h, w = math.ceil(images.shape[2] / 4), math.ceil(images.shape[3] / 4)
    pos = F.interpolate(model.absolute_pos_embed, size=(h, w), mode="bicubic")
    x = x.transpose(1, 2).view(b, c, h, w) + pos
    x = x.flatten(2).transpose(1, 2)
    outs = []
    for i, stage in enumerate(model.stages):
        graph = stage.graph_construction_model
        c = x.shape[-1]
        knn = None
        if graph.medium is not None:
            m = graph.medium
            knn = baseline_knn(x, h, w, m.k, m.window_length, m.dilation)
        edge_list, _ = baseline_edges(b, h, w, knn)
        tokens = torch.cat([graph.node_layers[0].virtual_node_embed.unsqueeze(0).repeat(b, 1, 1), x], dim=1)
        for block in stage.blocks:
            tokens = tokens + block.proj(baseline_grmp(block.graph_conv, block.norm1(tokens), h, w, edge_list))
            tokens = tokens + block.ffn(block.norm2(tokens))
        x = tokens[:, 1:, :]
        outs.append(getattr(model, f"norm{i}")(x).view(-1, h, w, c).permute(0, 3, 1, 2).contiguous())
        if stage.downsample is not None:
            x = stage.downsample(x.reshape(b, h, w, c)).flatten(1, 2)
            h, w = (h + 1) // 2, (w + 1) // 2
    return outs


def _build(size: int):
    import segzoo

    torch.manual_seed(0)
    model = segzoo.create_model(MODEL).eval()
    images = torch.randn(1, 3, size, size)
    runners = {
        "backbone/baseline": lambda: baseline_backbone(model.backbone, images),
        "backbone/segzoo": lambda: model.backbone(images),
        "model/baseline": lambda: model._to_input_size(
            model.decode_head(baseline_backbone(model.backbone, images)), images
        ),
        "model/segzoo": lambda: model(images),
    }
    return model, images, runners


def peak_memory(name: str | None, size: int, threads: int) -> float:
    """Peak RSS (MB) of a fresh process that builds the model and runs ``name`` once (None: builds only)."""
    return run_fresh(__file__, "--peak-of", name or BUILD_ONLY, "--size", str(size), "--threads", str(threads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--peak-of", help=argparse.SUPPRESS)  # one memory run (internal)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.peak_of:
        _, _, runners = _build(args.size)
        torch.set_grad_enabled(False)
        if args.peak_of != BUILD_ONLY:
            runners[args.peak_of]()
        print(json.dumps(peak_memory_mb("cpu")))
        return
    torch.set_grad_enabled(False)
    model, images, runners = _build(args.size)

    for part in ("backbone", "model"):  # equal outputs first
        base, ours = runners[f"{part}/baseline"](), runners[f"{part}/segzoo"]()
        pairs = zip(base, ours) if part == "backbone" else [(base, ours)]
        err = max(((a - b).norm() / b.norm()).item() for a, b in pairs)
        print(f"{part}: max relative L2 difference baseline vs segzoo {err:.2e}")
    flops = {}
    for part in ("backbone", "model"):
        with FlopCounterMode(display=False) as counter:
            runners[f"{part}/segzoo"]()
        flops[part] = counter.get_total_flops()
    times = interleaved_seconds(runners, args.runs)
    print(
        f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
        f"input 1x3x{args.size}x{args.size}, median of {args.runs} interleaved runs"
    )
    print(f"peak RSS of a process that only builds the model: {peak_memory(None, args.size, args.threads):.0f} MB")
    print("| part | implementation | time (s) | speed-up | GFLOP/s | peak RSS, build + one run (MB) |")
    print("|---|---|---:|---:|---:|---:|")
    for name in runners:
        part, impl = name.split("/")
        seconds = statistics.median(times[name])
        speedup = statistics.median(times[f"{part}/baseline"]) / seconds
        peak = peak_memory(name, args.size, args.threads)
        print(f"| {part} | {impl} | {seconds:.3f} | {speedup:.2f}x | {flops[part] / seconds / 1e9:.1f} | {peak:.0f} |")
    print(json.dumps({name: statistics.median(t) for name, t in times.items()}))


if __name__ == "__main__":
    main()
