"""Devices: find what this machine can compute on, pick the best, describe it, synchronize it.

Used by every notebook (first in ``00_welcome_and_setup`` and ``01_cpu_vs_gpu_tpu``).

The order of preference is ``cuda -> mps -> xla -> cpu``. An explicit ``device=`` argument
wins, then the ``LABKIT_DEVICE`` environment variable, then that order. Nothing here keeps
state between calls: each function looks at the machine afresh, so tests can mock it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
from dataclasses import asdict, dataclass, field

import torch

from labkit import _args

KINDS = ("cuda", "mps", "xla", "cpu")
ENV_VAR = "LABKIT_DEVICE"


@dataclass(frozen=True)
class DeviceInfo:
    """What a learner needs to know about one device."""

    device: str  # e.g. "cpu", "cuda:0", "mps", "xla:0"
    kind: str  # cpu | cuda | mps | xla
    name: str  # marketing name or CPU model
    cores: int | None  # CPU cores, or CUDA streaming multiprocessors (SMs)
    memory_gb: float | None  # RAM for the CPU, device memory otherwise
    fast_bf16: bool  # hardware bfloat16 units (CPU: avx512_bf16 / AMX; GPU: Ampere+; TPU)
    fast_fp16: bool  # hardware float16 maths (GPU tensor cores, Apple GPU, CPU: avx512_fp16/AMX)
    int8_kernels: bool  # PyTorch has fast int8 kernels for it (CPU: x86/fbgemm/onednn engine)
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self):
        _args.fields(self)

    def as_dict(self) -> dict:
        return asdict(self)


# --- what is there -------------------------------------------------------------------------


def _xla_module():
    """Return ``torch_xla.core.xla_model`` when torch_xla is installed, else None."""
    if importlib.util.find_spec("torch_xla") is None:
        return None
    try:
        return importlib.import_module("torch_xla.core.xla_model")
    except Exception:  # a broken torch_xla install must not break the CPU path
        return None


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """All devices PyTorch can use here, best first, e.g. ``['cuda:0', 'cuda:1', 'cpu']``."""
    found: list[str] = []
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        found.append("mps")
    xm = _xla_module()
    if xm is not None:
        try:
            found.append(str(xm.xla_device()))
        except Exception:
            pass
    found.append("cpu")
    return found


def check_device(device, *, name: str = "device", source: str = "argument") -> torch.device:
    """``device`` (a str such as ``'cuda:0'`` or a ``torch.device``) as a ``torch.device`` that
    exists on this machine; otherwise a ValueError naming ``name`` and the available devices
    (TypeError if it is not a str or torch.device). Every labkit function taking ``device=``
    goes through this, so ``'banana'`` or ``'cuda:3'`` never reach torch's own errors."""
    _args.instance(name, device, (str, torch.device), "a device name such as 'cpu' or 'cuda:0' (str or torch.device)")
    available = available_devices()
    where = f" (from {source})" if source != "argument" else ""
    if isinstance(device, str):
        kind, _, index = device.strip().partition(":")
        if kind not in KINDS or (index and not index.isdigit()):
            raise ValueError(f"{name} {device!r}{where} is not a device name: expected one of {', '.join(KINDS)} "
                             f"with an optional index (e.g. 'cuda:0'); available here: {available}")
        device = torch.device(device.strip())
    if device.type == "cpu" and device.index in (None, 0):
        return device
    present = [d for d in available if torch.device(d).type == device.type]
    if not present or (device.index is not None and f"{device.type}:{device.index}" not in present
                       and not (device.type == "mps" and device.index == 0)):
        raise ValueError(f"{name} {str(device)!r}{where} is not available; available here: {available}")
    return device


def get_device(device: str | torch.device | None = None) -> torch.device:
    """Pick the device to use.

    ``device`` (if given) wins, then ``$LABKIT_DEVICE``, then the best available in the order
    cuda -> mps -> xla -> cpu. Asking for a device that is not present is a ValueError, so a
    notebook never silently runs somewhere else than the learner asked.
    """
    if device is not None:
        return check_device(device)
    choice = os.environ.get(ENV_VAR, "").strip()
    if not choice:
        return torch.device(available_devices()[0])
    return check_device(choice, name=ENV_VAR, source=f"${ENV_VAR}")


def synchronize(device: str | torch.device | None = None) -> None:
    """Wait until all queued work on ``device`` has finished (a no-op on the CPU).

    GPUs and TPUs run asynchronously: a timer read without synchronizing measures only how long
    it took to *queue* the work. ``labkit.timing`` calls this around everything it times.
    """
    dev = check_device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()
    elif dev.type == "xla":
        xm = _xla_module()
        if xm is not None:
            mark_step = getattr(xm, "mark_step", None)
            if mark_step is not None:  # lazy tensors: compile and launch the traced graph first
                mark_step()
            xm.wait_device_ops()


# --- what each device is -----------------------------------------------------------------------


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where that file does not exist)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def cpu_cores() -> int:
    """Cores this process may use (respects taskset / container limits)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _total_ram_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return None


VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def int8_saturation_risk(flags: set[str] | None = None) -> bool:
    """True on an x86 CPU with AVX2 or AVX-512 but no VNNI int8 dot-product instructions.

    There, ONNX Runtime's u8 x s8 int8 kernels add pairs of products in 16 bits
    (``vpmaddubsw``), which can saturate; ORT's docs advise ``reduce_range`` (7-bit weights) on
    such CPUs. Measured on an AVX2-only EPYC: an MLP's dynamic-int8 error fell from 7.4% to 1.3%
    of its output range with it. ``flags`` defaults to :func:`cpu_flags` (empty off Linux: False).
    """
    flags = cpu_flags() if flags is None else set(_args.instance("flags", flags, (set, frozenset), "a set of CPU flags"))
    return bool({"avx2", "avx512f"} & flags) and not (VNNI_FLAGS & flags)


def _describe_cpu() -> DeviceInfo:
    flags = cpu_flags()
    engines = set(torch.backends.quantized.supported_engines)
    notes = [f"torch CPU capability: {torch.backends.cpu.get_cpu_capability()}"]
    if VNNI_FLAGS & flags:
        notes.append("VNNI int8 dot-product instructions present")
    return DeviceInfo(
        device="cpu",
        kind="cpu",
        name=cpu_name(),
        cores=cpu_cores(),
        memory_gb=_total_ram_gb(),
        fast_bf16=bool({"avx512_bf16", "amx_bf16"} & flags),
        fast_fp16=bool({"avx512_fp16", "amx_fp16"} & flags),
        int8_kernels=bool({"x86", "fbgemm", "onednn", "qnnpack"} & engines),
        notes=tuple(notes),
    )


def _describe_cuda(dev: torch.device) -> DeviceInfo:
    index = dev.index if dev.index is not None else 0
    props = torch.cuda.get_device_properties(index)
    major, minor = props.major, props.minor
    return DeviceInfo(
        device=f"cuda:{index}",
        kind="cuda",
        name=props.name,
        cores=props.multi_processor_count,
        memory_gb=props.total_memory / 1e9,
        fast_bf16=major >= 8,  # Ampere and newer have bf16 tensor cores
        fast_fp16=major >= 7,  # Volta and newer have fp16 tensor cores
        int8_kernels=(major, minor) >= (7, 5),  # Turing+ int8 tensor cores
        notes=(f"compute capability {major}.{minor}",),
    )


def _describe_mps() -> DeviceInfo:
    return DeviceInfo(
        device="mps",
        kind="mps",
        name="Apple GPU (Metal Performance Shaders)",
        cores=None,
        memory_gb=_total_ram_gb(),  # unified memory shared with the CPU
        fast_bf16=False,
        fast_fp16=True,
        int8_kernels=False,
        notes=("unified memory: the GPU shares the Mac's RAM",),
    )


def _describe_xla(dev: torch.device) -> DeviceInfo:
    hw = os.environ.get("PJRT_DEVICE", "TPU")
    return DeviceInfo(
        device=str(dev),
        kind="xla",
        name=f"XLA device ({hw})",
        cores=None,
        memory_gb=None,
        fast_bf16=hw.upper() == "TPU",  # TPUs' matrix units work in bfloat16
        fast_fp16=False,
        int8_kernels=False,
        notes=("lazy tensors: work is traced and compiled by XLA, run at synchronize()",),
    )


def describe_device(device: str | torch.device | None = None) -> DeviceInfo:
    """Describe ``device`` (default: the best one) as a :class:`DeviceInfo`."""
    dev = get_device(device)
    if dev.type == "cuda":
        return _describe_cuda(dev)
    if dev.type == "mps":
        return _describe_mps()
    if dev.type == "xla":
        return _describe_xla(dev)
    return _describe_cpu()


def device_report() -> list[DeviceInfo]:
    """One :class:`DeviceInfo` per available device, best first."""
    return [describe_device(d) for d in available_devices()]


def format_report(infos: list[DeviceInfo] | None = None) -> str:
    """A plain-text table of :func:`device_report` for terminals and notebooks."""
    infos = device_report() if infos is None else infos
    head = f"{'device':<8} {'name':<34} {'cores/SMs':>9} {'mem GB':>7} {'bf16':>5} {'fp16':>5} {'int8':>5}"
    rows = [head, "-" * len(head)]
    for i in infos:
        mem = f"{i.memory_gb:.1f}" if i.memory_gb is not None else "?"
        rows.append(
            f"{i.device:<8} {i.name[:34]:<34} {i.cores if i.cores is not None else '?':>9} {mem:>7} "
            f"{'fast' if i.fast_bf16 else 'slow':>5} {'fast' if i.fast_fp16 else 'slow':>5} "
            f"{'yes' if i.int8_kernels else 'no':>5}"
        )
    return "\n".join(rows)


def cpu_threads_env() -> dict:
    """Thread settings that change timings, for a report."""
    return {"torch threads": torch.get_num_threads(), "interop threads": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset")}


def cpu_threads(n: int):
    """``with cpu_threads(1): ...`` runs the block with ``torch.set_num_threads(n)`` and puts the
    previous count back afterwards, even on an error. One thread suits many tiny models trained
    one after another; big matrix products want every core. ``n`` is checked at the call."""
    return _threads(_args.positive_int("n", n))


@contextlib.contextmanager
def _threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(previous)
