"""Where prediction runs and how many chunks go through the network at once.

`resolve_devices` turns a --device value into torch devices, `choose_batch` sizes the
automatic batch from free memory, and `ChunkRunner` runs batches of chunks to softmax
probabilities (halving its batch on a CUDA out-of-memory error).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from bone_apps.core.errors import PredictConfigError
from bone_apps.core.jobs.devices import gpu_indices, parse_devices

if TYPE_CHECKING:
    import torch

# On a CPU a forward pass saturates the cores at about a quarter megapixel; larger batches only
# cost memory and cache (measured: 512 px chunks run fastest one at a time), so the automatic
# CPU batch gathers small chunks up to this many pixels and no more.
CPU_PIXELS_PER_PASS = 512 * 512
# Share of the available RAM (CPU) or free GPU memory (CUDA) the automatic batch may fill.
CPU_MEMORY_FRACTION = 0.25
GPU_MEMORY_FRACTION = 0.8
MAX_AUTO_BATCH = 256


def resolve_devices(spec: str = "auto", local_rank: int | None = None) -> list[str]:
    """Torch device names for a --device value: ["cpu"], ["cuda:0"], or several for DataParallel.

    Under torchrun (`local_rank` given) each process takes one GPU of its own. "cuda:all" names
    every visible GPU.
    """
    devices = parse_devices(spec, PredictConfigError)
    spec = devices[0]
    if spec == "cpu":
        return ["cpu"]
    from bone_apps.core.jobs.monitor import cuda_available_cheaply

    usable = cuda_available_cheaply()
    if usable:
        import torch

        usable = torch.cuda.is_available()
    if not usable:
        if spec == "auto":
            return ["cpu"]
        raise PredictConfigError("no CUDA GPU is available: choose device cpu or auto.")
    import torch

    count = torch.cuda.device_count()
    if spec in ("auto", "cuda"):
        ids = [0 if local_rank is None else local_rank % count]
    else:
        ids = gpu_indices(devices, count)
        bad = [i for i in ids if i >= count]
        if bad:
            raise PredictConfigError(f"GPU {bad[0]} does not exist ({count} GPUs): use cuda:0 to "
                                     f"cuda:{count - 1}.")
        if local_rank is not None:
            ids = [ids[local_rank % len(ids)]]
    return [f"cuda:{i}" for i in dict.fromkeys(ids)]


def _activation_bytes_cpu(model: torch.nn.Module, shape: tuple[int, ...], multiple: int) -> int:
    """Bytes of every layer output for one chunk of `shape` (C, [D,] H, W): an upper bound on
    what a forward pass holds at once, measured on a small input and scaled by the voxels."""
    import torch

    small = tuple(min(s, 2 * multiple) for s in shape[1:])
    total = 0

    def hook(_module, _inputs, output) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(torch.zeros((1, shape[0], *small)))
    finally:
        for handle in handles:
            handle.remove()
    return int(total * math.prod(shape[1:]) / math.prod(small))


def _gpu_bytes_per_chunk(model: torch.nn.Module, device: str, shape: tuple[int, ...]) -> int:
    """Peak GPU memory one chunk costs in a forward pass, from a trial pass (the paper's estimate)."""
    import torch

    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    try:
        with torch.no_grad():
            out = model(torch.zeros((1, *shape), device=device))
            del out
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise PredictConfigError(
            f"the GPU ran out of memory for a single chunk of {'x'.join(map(str, shape[1:]))} voxels: "
            "choose a smaller chunk (e.g. {chunk} 256) or the CPU.", "chunk") from None
    torch.cuda.synchronize(device)
    return max(1, torch.cuda.max_memory_allocated(device) - base)


def choose_batch(model: torch.nn.Module, devices: Sequence[str], shape: tuple[int, ...], classes: int,
                 chunks: int, multiple: int, reserve_bytes: int = 0, extra_per_chunk: int = 0) -> int:
    """The automatic batch: how many chunks of `shape` (C, [D,] H, W) one forward pass takes.

    CUDA: free memory of the first GPU (less `reserve_bytes` for the merge buffers) divided
    by a trial pass's peak (plus `extra_per_chunk`: the slices a chunk keeps open), times the
    number of GPUs. CPU: available RAM over the layer outputs of one chunk, but at most
    CPU_PIXELS_PER_PASS pixels per pass. Rounded down to a power of two, so small changes in
    free memory between runs do not change the batch.
    """
    voxels = math.prod(shape[1:])
    if devices[0].startswith("cuda"):
        import torch

        per_chunk = (_gpu_bytes_per_chunk(model, devices[0], shape) + voxels * classes * 4 * 3
                     + extra_per_chunk)
        free, _total = torch.cuda.mem_get_info(devices[0])
        batch = int((free * GPU_MEMORY_FRACTION - reserve_bytes) // per_chunk) * len(devices)
    else:
        import psutil

        per_chunk = (_activation_bytes_cpu(model, shape, multiple) + voxels * (classes + shape[0]) * 4
                     + extra_per_chunk)
        available = psutil.virtual_memory().available - reserve_bytes
        batch = min(int(available * CPU_MEMORY_FRACTION // per_chunk),
                    max(1, CPU_PIXELS_PER_PASS // voxels))
    batch = max(1, min(batch, chunks, MAX_AUTO_BATCH))
    return 1 << (batch.bit_length() - 1)


class ChunkRunner:
    """Runs batches of chunks through the network and returns softmax probabilities.

    On a CUDA out-of-memory error the batch is halved and the chunks are run again, so a
    too-optimistic estimate slows the run down instead of ending it.

    Args:
        model: the network (already on `devices[0]`), or any callable mapping (B, C, ...) to
            logits (B, classes, ...).
        devices: torch device names; several wrap the model in DataParallel.
        batch: chunks per forward pass.
        tta: average over the in-plane flips (identity, x, y, x and y).
    """

    def __init__(self, model: Callable, devices: Sequence[str], batch: int, tta: bool = False) -> None:
        import torch

        self._torch = torch
        self.devices = list(devices)
        self.device = torch.device(self.devices[0])
        self.batch = int(batch)
        self.tta = tta
        self.halvings = 0
        self.model_seconds = 0.0
        if len(self.devices) > 1:
            ids = [torch.device(d).index for d in self.devices]
            model = torch.nn.DataParallel(model, device_ids=ids, output_device=ids[0])
        self.model = model

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        torch = self._torch
        spatial = x.dim() - 2
        axes = (-1, -2)
        flips = [()] + ([(axes[0],), (axes[1],), axes] if self.tta and spatial >= 2 else [])
        total = None
        for dims in flips:
            logits = self.model(torch.flip(x, dims) if dims else x)
            probs = torch.softmax(logits.float(), dim=1)
            if dims:
                probs = torch.flip(probs, dims)
            total = probs if total is None else total.add_(probs)
        return total if len(flips) == 1 else total.div_(len(flips))

    def _timed(self, x: torch.Tensor) -> torch.Tensor:
        torch = self._torch
        cuda = self.device.type == "cuda"
        start = time.perf_counter()
        # Deterministic kernels: the same run twice gives bitwise-identical probabilities.
        with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
            out = self._probabilities(x)
            if cuda:
                torch.cuda.synchronize(self.device)
        self.model_seconds += time.perf_counter() - start
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities (B, classes, ...) float32 for chunks x (B, C, ...) on the device."""
        torch = self._torch
        parts = []
        i = 0
        while i < x.shape[0]:
            part = x[i:i + self.batch]
            try:
                parts.append(self._timed(part))
            except torch.cuda.OutOfMemoryError:
                if self.batch == 1:
                    raise PredictConfigError(
                        "the GPU ran out of memory for a single chunk: choose a smaller chunk "
                        "(e.g. {chunk} 256) or the CPU.", "chunk") from None
                self.batch = max(1, self.batch // 2)
                self.halvings += 1
                torch.cuda.empty_cache()
                continue
            i += part.shape[0]
        return parts[0] if len(parts) == 1 else torch.cat(parts)
