"""Speed benchmarks: batched vs looped decoders and pre-training steps, fit throughput, CPU variants, FLOP/s.

- :func:`decoder_speed`: M decoders in one batched pass (:class:`ModuleStack`) against a Python
  loop over M modules. One timed step is a forward and a backward pass of all M decoders
  (training mode, features of M inputs from the shared encoder, computed once outside the
  timing).
- :func:`pretrain_step_speed`: a whole UGoDIT pre-training step (encoder, M decoders, MRI loss,
  backward, Adam), :class:`~ugodit_pl.methods.UGoDITPretrain`'s batched path against a loop over
  the measurements.
- :func:`fit_throughput`: test-time fitting of B measurements at once, in measurements per hour.
- :func:`variant_speed`, :func:`compile_speed`, :func:`thread_scaling`: float32 vs channels_last vs
  bfloat16 autocast, ``torch.compile`` (in a subprocess with a time limit), and the thread count.
- :func:`count_flops`, :func:`matmul_peak`: FLOPs of a step (``FlopCounterMode``) and the
  matrix-multiply throughput of the same machine, to put the achieved FLOP/s in proportion.
- :func:`loop_overhead`: the library's fit step against the same objective written as a plain PyTorch
  loop (:func:`_plain_aseqdip_loop`), side by side, with a check that both compute the same outputs.
- :func:`tv_solver_speed`: one total-variation solve by the library (torch, on the device) against sigpy's
  ``TotalVariationRecon`` with the same steps.
- :func:`run_speed_suite`: all of the above and the time to quality on the real-MRI panel
  (:mod:`.time_to_quality`), the ``speed`` suite of ``ugodit benchmark``.

Timed steps of different kinds alternate so that all see the same machine load; the figures are
medians over ``repeats`` after ``warmup`` untimed steps. ``torch.set_num_threads`` is left as it is
(except in :func:`thread_scaling`, which restores it).

>>> result = decoder_speed(num_decoders=2, network="unet", width=4, size=16, repeats=1, warmup=0)
>>> result["batched_s"] > 0 and result["looped_s"] > 0 and result["speedup"] > 0
True
"""

from __future__ import annotations

import json
import math
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ugodit_pl.nets import ModuleStack, SkipNet, UNet
from ugodit_pl.nets import stack as stack_module

__all__ = [
    "compile_speed",
    "count_flops",
    "decoder_speed",
    "fit_throughput",
    "loop_overhead",
    "matmul_peak",
    "pretrain_step_speed",
    "thread_scaling",
    "tv_solver_speed",
    "variant_speed",
]


def _network(network: str, width: Optional[int], in_channels: int) -> nn.Module:
    name = network.lower()
    if name == "unet":
        c = 64 if width is None else int(width)
        return UNet(in_channels=in_channels, out_channels=in_channels, channels=(c, 2 * c, 4 * c, 4 * c), seed=0)
    if name == "skip":
        c = 128 if width is None else int(width)
        return SkipNet(in_channels=in_channels, out_channels=in_channels, channels_down=(c,) * 5, channels_up=(c,) * 5, seed=0)
    raise ValueError(f"decoder_speed: network must be 'unet' or 'skip', got {network!r}")


def _timed(step: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def decoder_speed(
    num_decoders: int = 4,
    network: str = "unet",
    width: Optional[int] = None,
    size: int = 128,
    repeats: int = 5,
    warmup: int = 2,
    device: str = "cpu",
    grouped_channels_last: bool = True,
) -> Dict[str, Any]:
    """Time a forward+backward of ``num_decoders`` decoders, batched (ModuleStack) vs looped.

    Args:
        num_decoders: M.
        network: ``"unet"`` (widths ``(w, 2w, 4w, 4w)``, default w = 64: the authors' MRI U-Net, 2
            channels) or ``"skip"`` (5 scales of w channels, default 128: the DIP skip network, 3
            channels).
        width: w above; ``None`` for the authors' width.
        size: the inputs are ``size x size`` images.
        repeats, warmup: timed and untimed steps of each kind.
        device: where to run.
        grouped_channels_last: the value of ``ugodit_pl.nets.stack.STACKED_CONV_CHANNELS_LAST_ON_CPU``
            during the run (True: the batched convolutions run as channels-last grouped convolutions on
            CPU; False: PyTorch's own vmap rule, NCHW grouped convolutions).

    Returns:
        a dict with ``batched_s`` and ``looped_s`` (median seconds per step), ``speedup``
        (looped / batched, > 1 when batching is faster), the per-repeat timings and the settings.
    """
    dev = torch.device(device)
    in_channels = 2 if network.lower() == "unet" else 3
    net = _network(network, width, in_channels).to(dev)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(num_decoders, in_channels, size, size, generator=generator).to(dev)
    with torch.no_grad():
        deepest, skips = net.encoder(x)
    stack = ModuleStack(net.decoder, num_decoders, reinit=0).to(dev)
    loop = [stack.module_at(i) for i in range(num_decoders)]

    def batched() -> None:
        out = stack(deepest, skips)
        out.square().mean().backward()
        stack.zero_grad(set_to_none=True)

    def looped() -> None:
        loss = 0.0
        for i, decoder in enumerate(loop):
            out = decoder(deepest[i : i + 1], [None if s is None else s[i : i + 1] for s in skips])
            loss = loss + out.square().mean()
        loss.backward()
        for decoder in loop:
            decoder.zero_grad(set_to_none=True)

    times_b: List[float] = []
    times_l: List[float] = []
    previous = stack_module.STACKED_CONV_CHANNELS_LAST_ON_CPU
    stack_module.STACKED_CONV_CHANNELS_LAST_ON_CPU = grouped_channels_last
    try:
        for _ in range(warmup):
            batched()
            looped()
        for _ in range(repeats):
            times_b.append(_timed(batched, dev))
            times_l.append(_timed(looped, dev))
    finally:
        stack_module.STACKED_CONV_CHANNELS_LAST_ON_CPU = previous
    batched_s, looped_s = statistics.median(times_b), statistics.median(times_l)
    return {
        "network": network.lower(),
        "num_decoders": num_decoders,
        "width": width,
        "size": size,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "grouped_channels_last": grouped_channels_last,
        "decoder_parameters": sum(p.numel() for p in net.decoder.parameters()),
        "batched_s": batched_s,
        "looped_s": looped_s,
        "speedup": looped_s / batched_s,
        "batched_runs_s": times_b,
        "looped_runs_s": times_l,
    }


# ============================================================================ the ``speed`` suite
# Full optimiser steps (not only decoders) on a synthetic multi-coil MRI problem of the benchmark's
# size; the content of the images does not change the cost.

def _mri_problem(num: int, size: Tuple[int, int], coils: int = 8, seed: int = 0) -> Dict[str, Any]:
    """``num`` synthetic multi-coil measurements (random images, smooth maps, 4x 1-D random masks)."""
    from ugodit_pl.complex import complex_to_channels
    from ugodit_pl.operators import MultiCoilMRI, make_mask

    height, width = size
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    maps = []
    for c in range(coils):
        angle = 2 * math.pi * c / coils
        weight = torch.exp(-((xx - math.cos(angle)) ** 2 + (yy - math.sin(angle)) ** 2))
        maps.append(weight * torch.exp(1j * (xx + c * yy)))
    maps_t = torch.stack(maps)
    maps_t = (maps_t / maps_t.abs().pow(2).sum(0, keepdim=True).sqrt()).to(torch.complex64)
    masks = torch.stack([make_mask("random", size, 4.0, 0.08, seed=seed + i) for i in range(num)])
    operator = MultiCoilMRI(masks, maps_t.unsqueeze(0).expand(num, -1, -1, -1).contiguous())
    images = torch.rand(num, 2, height, width, generator=generator)
    y = operator(images)
    return {"y": y, "operator": operator, "index": torch.arange(num), "name": [f"synthetic{i}" for i in range(num)],
            "x": complex_to_channels(torch.complex(images[:, 0], images[:, 1]))}


def _median_times(steps: Dict[str, Callable[[], None]], repeats: int, warmup: int, device: torch.device) -> Dict[str, List[float]]:
    """Run each step ``warmup`` times, then ``repeats`` times interleaved (same load for all); timings per step."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(_timed(step, device))
    return times


def count_flops(step: Callable[[], None]) -> int:
    """FLOPs of one call of ``step`` (``torch.utils.flop_counter.FlopCounterMode``: convolutions and matmuls).

    >>> count_flops(lambda: torch.ones(4, 8) @ torch.ones(8, 2))
    128
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def matmul_peak(n: int = 2048, repeats: int = 5, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Dict[str, Any]:
    """Matrix-multiply throughput (FLOP/s) of an ``n x n`` product: the best of ``repeats`` timed products.

    >>> matmul_peak(64, repeats=1)["flop_per_s"] > 0
    True
    """
    dev = torch.device(device)
    a = torch.rand(n, n, device=dev).to(dtype)
    b = torch.rand(n, n, device=dev).to(dtype)
    a @ b  # warm-up
    times = [_timed(lambda: a @ b, dev) for _ in range(repeats)]
    best = min(times)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "best_s": best, "flop_per_s": 2.0 * n**3 / best,
            "threads": torch.get_num_threads()}


def pretrain_step_speed(
    num_decoders: int,
    *,
    network_args: Optional[Dict[str, Any]] = None,
    size: Tuple[int, int] = (112, 88),
    repeats: int = 3,
    warmup: int = 1,
    device: str = "cpu",
) -> Dict[str, Any]:
    """One UGoDIT pre-training step (forward, loss with the MRI operator, backward, Adam) for M measurements.

    ``batched``: :class:`~ugodit_pl.methods.UGoDITPretrain`'s own path (the encoder on the M inputs as
    one batch, the M decoders in one :class:`ModuleStack` pass). ``looped``: the same networks
    (copies of the same weights) and the same loss, measurement by measurement in a Python loop
    (encoder and decoder i on input i), as the authors' code does. Both end with one Adam step.

    >>> r = pretrain_step_speed(2, network_args={"channels": [4, 8, 8, 8]}, size=(16, 16), repeats=1, warmup=0)
    >>> r["batched_s"] > 0 and r["looped_s"] > 0
    True
    """
    import copy

    from ugodit_pl.methods import UGoDITPretrain
    from ugodit_pl.methods.losses import residual_norm

    dev = torch.device(device)
    args = dict(network_args or {"channels": [32, 64, 128, 128]})
    problem = _mri_problem(num_decoders, size)
    method = UGoDITPretrain(num_measurements=num_decoders, network="unet", network_args=args, seed=0,
                            tv_weight=0.0).to(dev)  # the looped path's objective (the papers')
    operator = problem["operator"].to(dev)
    index = problem["index"].to(dev)
    batch = {"y": problem["y"].to(dev), "operator": operator, "index": index, "name": problem["name"]}
    method.prepare(batch)
    y = method.begin_step(batch).y
    z = method.fit_state.inputs
    optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=method.lr)

    def batched() -> None:
        loss = method.training_step(batch, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    encoder = copy.deepcopy(method.encoder)
    decoders = [method.decoders.module_at(i) for i in range(num_decoders)]
    operators = [operator.select([i]) for i in range(num_decoders)]
    looped_params = list(encoder.parameters()) + [p for d in decoders for p in d.parameters()]
    looped_optimizer = torch.optim.Adam(looped_params, lr=method.lr)

    def looped() -> None:
        total = 0.0
        for i in range(num_decoders):
            zi = z[i : i + 1]
            out = decoders[i](*encoder(zi)) + (zi if method.residual else 0)
            data = residual_norm(operators[i](out) - y[i : i + 1], method.loss_norm) * operators[i].samples_per_pixel
            total = total + data + method.lam * method.proximity_term(out, zi)
        looped_optimizer.zero_grad(set_to_none=True)
        total.sum().backward()
        looped_optimizer.step()

    times = _median_times({"batched": batched, "looped": looped}, repeats, warmup, dev)

    def network_only() -> None:
        out = decoders[0](*encoder(z[:1]))
        out.square().mean().backward()

    flops = num_decoders * count_flops(network_only)
    encoder.zero_grad(set_to_none=True)
    batched_s, looped_s = statistics.median(times["batched"]), statistics.median(times["looped"])
    return {
        "M": num_decoders, "size": list(size), "network_args": args, "device": str(dev), "threads": torch.get_num_threads(),
        "batched_s": batched_s, "looped_s": looped_s, "speedup": looped_s / batched_s,
        "batched_runs_s": times["batched"], "looped_runs_s": times["looped"],
        "flops_per_step": flops, "batched_flop_per_s": flops / batched_s, "looped_flop_per_s": flops / looped_s,
    }


def fit_throughput(
    batch_sizes: Sequence[int] = (1, 4),
    *,
    network_args: Optional[Dict[str, Any]] = None,
    size: Tuple[int, int] = (112, 88),
    steps_per_fit: int = 1000,
    repeats: int = 3,
    warmup: int = 1,
    device: str = "cpu",
) -> List[Dict[str, Any]]:
    """Test-time UGoDIT fitting of B measurements at once (B decoders in one batched pass, frozen encoder).

    Returns, per B, the step time and the throughput in measurements per hour when each fit takes
    ``steps_per_fit`` steps: ``B * 3600 / (steps_per_fit * step_s)``.

    >>> r = fit_throughput((1,), network_args={"channels": [4, 8, 8, 8]}, size=(16, 16), steps_per_fit=10, repeats=1, warmup=0)
    >>> r[0]["measurements_per_hour"] > 0
    True
    """
    import tempfile
    from pathlib import Path

    from ugodit_pl.methods import UGoDITFit, UGoDITPretrain

    dev = torch.device(device)
    args = dict(network_args or {"channels": [32, 64, 128, 128]})
    results = []
    with tempfile.TemporaryDirectory(prefix="ugodit-speed-") as folder:
        weights = Path(folder) / "encoder.pt"
        UGoDITPretrain(num_measurements=1, network="unet", network_args=args, seed=0).save_transferable_weights(weights)
        for b in batch_sizes:
            problem = _mri_problem(int(b), size, seed=100)
            method = UGoDITFit(weights=str(weights), num_measurements=int(b), seed=0).to(dev)
            method.train()
            operator = problem["operator"].to(dev)
            index = problem["index"].to(dev)
            batch = {"y": problem["y"].to(dev), "operator": operator, "index": index, "name": problem["name"]}
            method.prepare(batch)
            optimizer = method.configure_optimizers()

            def step() -> None:
                loss = method.training_step(batch, 0)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            times = _median_times({"step": step}, repeats, warmup, dev)["step"]
            step_s = statistics.median(times)
            results.append({
                "B": int(b), "step_s": step_s, "runs_s": times, "steps_per_fit": int(steps_per_fit),
                "seconds_per_fit": steps_per_fit * step_s,
                "measurements_per_hour": int(b) * 3600.0 / (steps_per_fit * step_s),
                "size": list(size), "network_args": args, "threads": torch.get_num_threads(),
            })
    return results


def _plain_aseqdip_loop(batch: Dict[str, Any], network_args: Dict[str, Any], steps: int, lam: float,
                        update_every: int, lr: float) -> Tuple[List[float], torch.Tensor]:
    """aSeqDIP's objective as a user writes it in plain PyTorch: (per-step seconds, the last output).

    The same network (``seeded_network``: the method's seed, residual U-Net), the same measurement
    scale and start A^H y, the same coil-summed data term, lambda, input schedule and fused Adam, and
    an EMA of the outputs; no Lightning, no checks, no logging.
    """
    from ugodit_pl.methods.networks import seeded_network
    from ugodit_pl.methods.scaling import apply_scale, measurement_scale

    operator = batch["operator"]
    net = seeded_network("unet", network_args, seed=0, residual=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, fused=True)
    y = apply_scale(batch["y"], measurement_scale(operator, batch["y"]))
    z = operator.init_input(y)
    ema = torch.zeros_like(z)
    times, out = [], z
    for k in range(steps):
        start = time.perf_counter()
        if k > 0 and k % update_every == 0:
            with torch.no_grad():
                z = z + net(z)
        out = z + net(z)
        data = torch.view_as_real(operator(out) - y).square().sum(-1).flatten(1).mean(1) * operator.num_coils
        loss = (data + lam * (out - z).square().flatten(1).mean(1)).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            ema.mul_(0.99).add_(out.detach(), alpha=0.01)
        times.append(time.perf_counter() - start)
    return times, out.detach()


def loop_overhead(
    network_args: Optional[Dict[str, Any]] = None,
    size: Tuple[int, int] = (96, 72),
    steps: int = 60,
    repeats: int = 3,
) -> Dict[str, Any]:
    """The library's fit step against the same objective as a plain PyTorch loop, side by side, on CPU.

    The library: ``ASeqDIP`` at its defaults (residual U-Net, lambda 0.4, N = 10, fused Adam) fitted by
    a ``pl.Trainer`` (no logger, progress bar or checkpoints), one step being the time between two
    ``on_train_batch_start`` calls (Lightning's loop, the batch checks, the EMA, the logging
    included). The plain loop: :func:`_plain_aseqdip_loop`. ``repeats`` alternating runs of ``steps``
    steps each; the first 5 steps of each run are not counted. Both compute the same outputs: the
    result records their largest difference after the run (round-off, not a different objective).

    >>> r = loop_overhead({"channels": [4, 8, 8, 8]}, size=(16, 16), steps=8, repeats=1)
    >>> r["library_s"] > 0 and r["plain_s"] > 0 and r["same_outputs"]
    True
    """
    import pytorch_lightning as pl

    from ugodit_pl.apps.benchmarks.common import fit_method
    from ugodit_pl.methods import ASeqDIP

    args = dict(network_args or {"channels": [16, 32, 64, 64]})
    problem = _mri_problem(1, size, seed=3)
    batch = {k: problem[k] for k in ("y", "operator", "index", "name")}

    class Stamps(pl.Callback):
        def __init__(self) -> None:
            self.times: List[float] = []

        def on_train_batch_start(self, *args: Any) -> None:
            self.times.append(time.perf_counter())

        def on_train_end(self, *args: Any) -> None:
            self.times.append(time.perf_counter())

    library: List[float] = []
    plain: List[float] = []
    difference = 0.0
    for _ in range(repeats):
        method = ASeqDIP(network="unet", network_args=args, seed=0, tv_weight=0.0)  # the plain loop's objective
        stamps = Stamps()
        fit_method(method, batch, steps, callbacks=[stamps])
        library += [b - a for a, b in zip(stamps.times[:-1], stamps.times[1:])][5:]
        times, last = _plain_aseqdip_loop(batch, args, steps, method.lam, method.update_every, method.lr)
        plain += times[5:]
        support = batch["operator"].image_support()
        ours = method.fit_state.last[:1]
        difference = max(difference, float((ours - last * support).abs().max() / last.abs().max()))
    library_s, plain_s = statistics.median(library), statistics.median(plain)
    return {
        "size": list(size), "network_args": args, "steps": steps, "repeats": repeats, "threads": torch.get_num_threads(),
        "library_s": library_s, "plain_s": plain_s, "overhead": library_s / plain_s - 1.0,
        "library_runs_s": library, "plain_runs_s": plain,
        "largest_output_difference": difference, "same_outputs": difference < 1e-3,
    }


def tv_solver_speed(size: Tuple[int, int] = (96, 72), coils: int = 8, iterations: Optional[int] = None,
                    repeats: int = 3, warmup: int = 1, device: str = "cpu", lamda: float = 1e-3) -> Dict[str, Any]:
    """One total-variation solve (``iterations``, default ``classical.TV_MAX_ITER``) by the library
    (``classical.total_variation``: sigpy's primal-dual iteration written in torch, on ``device``) against
    sigpy's ``TotalVariationRecon`` with the same steps (numpy, on the CPU), alternating; medians over
    ``repeats`` after ``warmup`` untimed pairs. The result records the two images' relative difference.

    >>> r = tv_solver_speed(size=(16, 16), coils=2, iterations=5, repeats=1, warmup=0)
    >>> r["torch_s"] > 0 and r["sigpy_s"] > 0 and r["same_image"]
    True
    """
    import numpy as np
    from sigpy.mri.app import TotalVariationRecon

    from ugodit_pl import classical

    iterations = classical.TV_MAX_ITER if iterations is None else int(iterations)
    problem = _mri_problem(1, size, coils=coils, seed=5)
    dev = torch.device(device)
    k, mask, maps = (t.to(dev) for t in (problem["y"][0], problem["operator"].mask[0], problem["operator"].coil_maps[0]))
    scaled, _, s, scale, step = classical._scaled(k, mask, maps)
    tau, sigma = classical._tv_steps(scaled, s, step, lamda, None)
    y_np, m_np, s_np, _, _, _ = classical._prepare(k, mask, maps)
    images: Dict[str, torch.Tensor] = {}

    def library() -> None:
        images["torch"] = classical.total_variation(k, mask, maps, lamda=lamda, max_iter=iterations)

    def sigpy() -> None:
        app = TotalVariationRecon(y_np, s_np, lamda=lamda, weights=m_np, max_iter=iterations, tau=tau, sigma=sigma,
                                  solver="PrimalDualHybridGradient", show_pbar=False)
        images["sigpy"] = torch.from_numpy(np.asarray(app.run(), dtype=np.complex64) * scale)

    times = _median_times({"torch": library, "sigpy": sigpy}, repeats, warmup, dev)
    torch_s, sigpy_s = statistics.median(times["torch"]), statistics.median(times["sigpy"])
    reference = images["sigpy"]
    difference = float((images["torch"].cpu() - reference).norm() / reference.norm())
    return {"size": list(size), "coils": coils, "iterations": iterations, "lamda": lamda, "device": str(dev),
            "threads": torch.get_num_threads(), "repeats": repeats, "torch_s": torch_s, "sigpy_s": sigpy_s,
            "speedup": sigpy_s / torch_s, "torch_runs_s": times["torch"], "sigpy_runs_s": times["sigpy"],
            "relative_difference": difference, "same_image": difference < 1e-4}


def _single_net_step(network_args: Dict[str, Any], size: Tuple[int, int], device: torch.device,
                     channels_last: bool = False, autocast_bf16: bool = False, compiled: bool = False):
    """(step, flops-step) for one U-Net fit step with the MRI data term (aSeqDIP/UGoDIT-like), in a variant."""
    from ugodit_pl.nets import UNet

    problem = _mri_problem(1, size)
    operator = problem["operator"].to(device)
    y = problem["y"].to(device)
    z = operator.adjoint(y)
    net = UNet(**network_args, seed=0).to(device)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=memory)
    z = z.contiguous(memory_format=memory)
    model = torch.compile(net) if compiled else net
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-4)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            out = model(z)
        out = out.float()
        loss = (operator(out) - y).abs().pow(2).mean() + 2.0 * (out - z).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def flops_step() -> None:
        net(z).square().mean().backward()

    return step, flops_step


def variant_speed(
    network_args: Optional[Dict[str, Any]] = None,
    size: Tuple[int, int] = (112, 88),
    repeats: int = 3,
    warmup: int = 1,
    device: str = "cpu",
) -> Dict[str, Any]:
    """Step time of one U-Net fit step: float32 NCHW (baseline), channels_last, bfloat16 autocast.

    The variants alternate step by step, so they see the same machine load. ``torch.compile`` is
    measured separately (:func:`compile_speed`), in a subprocess with a time limit.

    >>> r = variant_speed({"channels": [4, 8, 8, 8]}, size=(16, 16), repeats=1, warmup=0)
    >>> sorted(r["step_s"])
    ['bf16_autocast', 'channels_last', 'fp32']
    """
    dev = torch.device(device)
    args = dict(network_args or {"channels": [32, 64, 128, 128]})
    steps = {}
    flops_step = None
    for name, kwargs in (("fp32", {}), ("channels_last", {"channels_last": True}), ("bf16_autocast", {"autocast_bf16": True})):
        step, flop_fn = _single_net_step(args, size, dev, **kwargs)
        steps[name] = step
        flops_step = flops_step or flop_fn
    times = _median_times(steps, repeats, warmup, dev)
    flops = count_flops(flops_step)
    median = {name: statistics.median(t) for name, t in times.items()}
    return {
        "size": list(size), "network_args": args, "device": str(dev), "threads": torch.get_num_threads(),
        "step_s": median, "runs_s": times, "speedup_vs_fp32": {k: median["fp32"] / v for k, v in median.items()},
        "flops_per_step_network": flops, "flop_per_s": {k: flops / v for k, v in median.items()},
    }


def compile_worker(spec: str) -> None:
    """Subprocess entry of :func:`compile_speed`: prints one JSON line with the compiled step's timings."""
    settings = json.loads(spec)
    torch.set_num_threads(int(settings["threads"]))
    dev = torch.device(settings["device"])
    size = tuple(settings["size"])
    start = time.perf_counter()
    step, _ = _single_net_step(settings["network_args"], size, dev, compiled=True)
    step()  # compiles
    compile_s = time.perf_counter() - start
    eager, _ = _single_net_step(settings["network_args"], size, dev)
    times = _median_times({"compiled": step, "eager": eager}, int(settings["repeats"]), 1, dev)
    print(json.dumps({"compile_s": compile_s, "compiled_s": statistics.median(times["compiled"]),
                      "eager_s": statistics.median(times["eager"]), "runs_s": times}), flush=True)


def compile_speed(
    network_args: Optional[Dict[str, Any]] = None,
    size: Tuple[int, int] = (112, 88),
    repeats: int = 3,
    device: str = "cpu",
    timeout_s: float = 300.0,
) -> Dict[str, Any]:
    """``torch.compile`` of the U-Net fit step, in a subprocess limited to ``timeout_s`` seconds.

    Returns the compile time and compiled/eager step times, or ``{"status": "timeout" | "error", ...}``
    with the reason: on CPU, Inductor needs a C++ compiler and can take minutes to compile.
    """
    import subprocess
    import sys

    spec = json.dumps({"network_args": dict(network_args or {"channels": [32, 64, 128, 128]}), "size": list(size),
                       "repeats": repeats, "device": device, "threads": torch.get_num_threads()})
    command = [sys.executable, "-c", f"from ugodit_pl.apps.benchmarks.speed import compile_worker; compile_worker({spec!r})"]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "timeout_s": timeout_s, "wall_s": time.perf_counter() - start}
    wall = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        return {"status": "error", "returncode": done.returncode, "error": " | ".join(tail), "wall_s": wall}
    result = json.loads(lines[-1])
    result.update(status="ok", wall_s=wall, speedup_vs_eager=result["eager_s"] / result["compiled_s"])
    return result


def thread_scaling(
    threads: Sequence[int] = (1, 2),
    network_args: Optional[Dict[str, Any]] = None,
    size: Tuple[int, int] = (112, 88),
    repeats: int = 2,
    device: str = "cpu",
) -> List[Dict[str, Any]]:
    """Step time of the float32 U-Net fit step with ``torch.set_num_threads(t)`` for each t (restored after).

    >>> r = thread_scaling((1,), {"channels": [4, 8, 8, 8]}, size=(16, 16), repeats=1)
    >>> r[0]["threads"], r[0]["step_s"] > 0
    (1, True)
    """
    dev = torch.device(device)
    args = dict(network_args or {"channels": [32, 64, 128, 128]})
    before = torch.get_num_threads()
    results = []
    try:
        for t in threads:
            torch.set_num_threads(int(t))
            step, _ = _single_net_step(args, size, dev)
            times = _median_times({"step": step}, repeats, 1, dev)["step"]
            results.append({"threads": int(t), "step_s": statistics.median(times), "runs_s": times})
    finally:
        torch.set_num_threads(before)
    return results


#: Suite presets: network and size of the MRI steps, M values, fit batch sizes, repeats.
SPEED_PRESETS: Dict[str, Dict[str, Any]] = {
    "tiny": {"network_args": {"channels": [4, 8, 8, 8]}, "size": (16, 16), "decoders": (2,), "fit_batches": (1, 2),
             "steps_per_fit": 10, "repeats": 1, "warmup": 0, "matmul_n": 64, "threads": (1,), "compile": False,
             "compile_timeout_s": 60.0, "overhead": [{"network_args": {"channels": [4, 8, 8, 8]}, "size": (16, 16),
                                                      "steps": 8, "repeats": 1}],
             "tv_sizes": [(16, 16)], "tv_iterations": 5, "time_to_quality": None},
    # the reduced-size MRI setting of the quality suites' issue (112 x 88, width-32 U-Net); the overhead and
    # the time to quality at the real-MRI panel's quick size (96 x 72 and 96 x 96, width-16 U-Net)
    "quick": {"network_args": {"channels": [32, 64, 128, 128]}, "size": (112, 88), "decoders": (2, 4, 8),
              "fit_batches": (1, 2, 4, 8), "steps_per_fit": 1000, "repeats": 3, "warmup": 1, "matmul_n": 2048,
              "threads": (1, 2), "compile": True, "compile_timeout_s": 420.0,
              "overhead": [{"network_args": {"channels": [16, 32, 64, 64]}, "size": (96, 72), "steps": 60, "repeats": 5},
                           {"network_args": {"channels": [32, 64, 128, 128]}, "size": (112, 88), "steps": 40, "repeats": 3}],
              "tv_sizes": [(96, 72), (230, 180)], "tv_iterations": None, "time_to_quality": "quick"},
    # the authors' U-Net at the fastMRI reconstruction size (for a GPU)
    "full": {"network_args": {"channels": [64, 128, 256, 256]}, "size": (320, 320), "decoders": (2, 4, 8),
             "fit_batches": (1, 4, 16), "steps_per_fit": 3000, "repeats": 5, "warmup": 2, "matmul_n": 8192,
             "threads": (), "compile": True, "compile_timeout_s": 600.0, "overhead": [], "tv_sizes": [(320, 320)],
             "tv_iterations": None, "time_to_quality": "full"},
}


def run_speed_suite(preset: str = "quick", *, device: str = "cpu", overrides: Optional[Dict[str, Any]] = None,
                    data: Optional[Any] = None, out_dir: Optional[Any] = None, seed: int = 0,
                    log: Callable[[str], None] = print) -> Dict[str, Any]:
    """The ``speed`` suite: every measurement above at the preset's size, the library's overhead against a
    plain loop (:func:`loop_overhead`, on CPU) and the time to quality on the real-MRI panel
    (:mod:`.time_to_quality`, its plots to ``out_dir``); returns the result dict."""
    if preset not in SPEED_PRESETS:
        raise ValueError(f"preset must be one of {', '.join(SPEED_PRESETS)}, got {preset!r}")
    s = dict(SPEED_PRESETS[preset], **(overrides or {}))
    start = time.perf_counter()
    size = tuple(s["size"])
    common = {"network_args": s["network_args"], "size": size, "device": device}
    peak = matmul_peak(int(s["matmul_n"]), device=device)
    log(f"speed: matmul peak {peak['flop_per_s'] / 1e9:.1f} GFLOP/s (n={peak['n']}, fp32)")
    peak_bf16 = matmul_peak(int(s["matmul_n"]), device=device, dtype=torch.bfloat16)
    log(f"speed: matmul peak {peak_bf16['flop_per_s'] / 1e9:.1f} GFLOP/s (bf16)")
    pretrain = []
    for m in s["decoders"]:
        r = pretrain_step_speed(int(m), repeats=int(s["repeats"]), warmup=int(s["warmup"]), **common)
        r["fraction_of_matmul_peak"] = r["batched_flop_per_s"] / peak["flop_per_s"]
        pretrain.append(r)
        log(f"speed: pre-training M={m}: batched {r['batched_s']:.3f} s, looped {r['looped_s']:.3f} s "
            f"(x{r['speedup']:.2f}), {r['batched_flop_per_s'] / 1e9:.1f} GFLOP/s")
    fits = fit_throughput(tuple(s["fit_batches"]), steps_per_fit=int(s["steps_per_fit"]), repeats=int(s["repeats"]),
                          warmup=int(s["warmup"]), **common)
    for r in fits:
        log(f"speed: fit B={r['B']}: {r['step_s']:.3f} s/step, {r['measurements_per_hour']:.1f} measurements/hour")
    variants = variant_speed(repeats=int(s["repeats"]), warmup=int(s["warmup"]), **common)
    variants["fraction_of_matmul_peak"] = {k: v / peak["flop_per_s"] for k, v in variants["flop_per_s"].items()}
    log("speed: variants " + ", ".join(f"{k} {v:.3f} s" for k, v in variants["step_s"].items()))
    compiled: Dict[str, Any] = {"status": "skipped"}
    if s["compile"]:
        compiled = compile_speed(repeats=int(s["repeats"]), timeout_s=float(s["compile_timeout_s"]), **common)
        log(f"speed: torch.compile {compiled.get('status')}: " + ", ".join(
            f"{k} {v:.2f}" for k, v in compiled.items() if isinstance(v, float)))
    threads = thread_scaling(tuple(s["threads"]), repeats=max(1, int(s["repeats"]) - 1), **common) if s["threads"] else []
    for r in threads:
        log(f"speed: {r['threads']} thread(s): {r['step_s']:.3f} s/step")
    overhead = []
    for o in (s["overhead"] if device == "cpu" else []):
        r = loop_overhead(o["network_args"], tuple(o["size"]), int(o["steps"]), int(o["repeats"]))
        overhead.append(r)
        log(f"speed: {r['size'][0]}x{r['size'][1]}, width {r['network_args']['channels'][0]}: library step "
            f"{r['library_s'] * 1e3:.1f} ms, plain PyTorch loop {r['plain_s'] * 1e3:.1f} ms: overhead "
            f"{100 * r['overhead']:+.1f} % (same outputs: {r['same_outputs']})")
    tv = []
    for tv_size in s["tv_sizes"]:
        r = tv_solver_speed(tuple(tv_size), iterations=s["tv_iterations"], repeats=int(s["repeats"]),
                            warmup=int(s["warmup"]), device=device)
        tv.append(r)
        log(f"speed: total variation at {r['size'][0]}x{r['size'][1]}, {r['iterations']} iterations: torch "
            f"{r['torch_s']:.2f} s ({r['device']}), sigpy {r['sigpy_s']:.2f} s (x{r['speedup']:.2f}; same image: "
            f"{r['same_image']})")
    quality = None
    if s["time_to_quality"]:
        from ugodit_pl.apps.benchmarks.time_to_quality import run_time_to_quality

        quality = run_time_to_quality(s["time_to_quality"], out_dir, data=data, device=device, seed=seed, log=log)
    return {
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()},
        "matmul_peak": peak, "matmul_peak_bf16": peak_bf16, "pretrain_step": pretrain, "fit_throughput": fits,
        "variants": variants, "compile": compiled, "threads": threads, "overhead": overhead,
        "tv_solver": tv, "time_to_quality": quality, "cpu_flags": _cpu_flags(), "total_seconds": time.perf_counter() - start,
    }


def _cpu_flags() -> List[str]:
    """The CPU features that matter for these kernels (AVX2, AVX-512, bf16, AMX), where Linux tells."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []
