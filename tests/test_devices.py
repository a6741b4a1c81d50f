"""labkit.devices: detection, choice, description and synchronization, with accelerators mocked."""

from __future__ import annotations

import types

import pytest
import torch

from labkit import devices as D


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(D, "_mps_available", lambda: False)
    monkeypatch.setattr(D, "_xla_module", lambda: None)
    monkeypatch.delenv(D.ENV_VAR, raising=False)


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend two CUDA GPUs exist (an Ampere A100-like card)."""
    props = types.SimpleNamespace(name="Fake A100", major=8, minor=0, multi_processor_count=108, total_memory=40e9)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda dev=None: calls.append(dev))
    monkeypatch.setattr(D, "_mps_available", lambda: False)
    monkeypatch.setattr(D, "_xla_module", lambda: None)
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    return calls


def test_cpu_is_always_available(cpu_only):
    assert D.available_devices() == ["cpu"]
    assert D.get_device() == torch.device("cpu")


def test_cuda_is_preferred_and_listed_per_gpu(fake_cuda):
    assert D.available_devices() == ["cuda:0", "cuda:1", "cpu"]
    assert D.get_device() == torch.device("cuda:0")
    assert D.get_device("cpu") == torch.device("cpu")


def test_order_cuda_mps_xla_cpu(monkeypatch):
    xm = types.SimpleNamespace(xla_device=lambda: "xla:0", wait_device_ops=lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(D, "_mps_available", lambda: True)
    monkeypatch.setattr(D, "_xla_module", lambda: xm)
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    assert D.available_devices() == ["mps", "xla:0", "cpu"]
    assert D.get_device().type == "mps"
    monkeypatch.setattr(D, "_mps_available", lambda: False)
    assert D.get_device().type == "xla"


def test_env_var_overrides_but_argument_wins(fake_cuda, monkeypatch):
    monkeypatch.setenv(D.ENV_VAR, "cpu")
    assert D.get_device() == torch.device("cpu")
    assert D.get_device("cuda:1") == torch.device("cuda:1")


def test_unavailable_or_unknown_devices_are_clear_errors(cpu_only, monkeypatch):
    with pytest.raises(ValueError, match="not available"):
        D.get_device("cuda")
    with pytest.raises(ValueError, match=r"device 'gpu' is not a device name.*available here: \['cpu'\]"):
        D.get_device("gpu")
    with pytest.raises(ValueError, match="device 'cuda:x' is not a device name"):
        D.get_device("cuda:x")
    with pytest.raises(TypeError, match="device must be"):
        D.get_device(3)
    monkeypatch.setenv(D.ENV_VAR, "tpu")
    with pytest.raises(ValueError, match=r"LABKIT_DEVICE 'tpu' \(from \$LABKIT_DEVICE\) is not a device name"):
        D.get_device()


@pytest.mark.parametrize("bad", ["cuda:3", "banana", "cuda", torch.device("cuda", 3), "mps", "xla:0", "cpu:x"])
def test_every_device_argument_names_the_available_devices(cpu_only, bad):
    for fn in (D.get_device, D.check_device, D.synchronize, D.describe_device):
        with pytest.raises(ValueError, match=r"device .* available here: \['cpu'\]"):
            fn(bad)


def test_an_index_past_the_gpus_is_refused(fake_cuda):
    assert D.check_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match=r"device 'cuda:3' is not available; available here"):
        D.check_device("cuda:3")


def test_describe_cpu_reads_real_machine(cpu_only):
    info = D.describe_device("cpu")
    assert info.kind == "cpu" and info.cores == D.cpu_cores() >= 1
    assert info.memory_gb is None or info.memory_gb > 0.1
    assert info.fast_bf16 == bool({"avx512_bf16", "amx_bf16"} & D.cpu_flags())
    assert info.int8_kernels == bool({"x86", "fbgemm", "onednn", "qnnpack"} & set(torch.backends.quantized.supported_engines))
    assert "cpu" in D.format_report([info])


def test_describe_cpu_flags_mocked(cpu_only, monkeypatch):
    monkeypatch.setattr(D, "cpu_flags", lambda: {"avx2", "fma"})
    assert D.describe_device("cpu").fast_bf16 is False
    monkeypatch.setattr(D, "cpu_flags", lambda: {"amx_bf16", "amx_fp16"})
    info = D.describe_device("cpu")
    assert info.fast_bf16 and info.fast_fp16


def test_describe_cuda_mocked(fake_cuda):
    info = D.describe_device("cuda:1")
    assert (info.device, info.name, info.cores) == ("cuda:1", "Fake A100", 108)
    assert info.fast_bf16 and info.fast_fp16 and info.int8_kernels
    assert info.memory_gb == pytest.approx(40.0)
    assert [i.kind for i in D.device_report()] == ["cuda", "cuda", "cpu"]


def test_describe_mps_and_xla_mocked(monkeypatch):
    waits = []
    xm = types.SimpleNamespace(xla_device=lambda: "xla:0", wait_device_ops=lambda: waits.append(1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(D, "_mps_available", lambda: True)
    monkeypatch.setattr(D, "_xla_module", lambda: xm)
    monkeypatch.setenv("PJRT_DEVICE", "TPU")
    assert D.describe_device("mps").fast_fp16
    x = D.describe_device("xla:0")
    assert x.kind == "xla" and x.fast_bf16 and "TPU" in x.name
    D.synchronize("xla:0")
    assert waits == [1]


def test_synchronize_calls_the_right_backend(fake_cuda, monkeypatch):
    D.synchronize("cuda:1")
    assert fake_cuda == [torch.device("cuda:1")]
    mps_calls = []
    monkeypatch.setattr(D, "_mps_available", lambda: True)
    monkeypatch.setattr(torch.mps, "synchronize", lambda: mps_calls.append(1))
    D.synchronize("mps")
    assert mps_calls == [1]
    D.synchronize("cpu")  # a no-op that must not touch cuda
    assert len(fake_cuda) == 1
    with pytest.raises(ValueError):
        D.synchronize("quantum")


def test_broken_xla_install_is_ignored(monkeypatch):
    monkeypatch.setattr(D.importlib.util, "find_spec", lambda name: object())

    def boom(name):
        raise ImportError("libtpu missing")

    monkeypatch.setattr(D.importlib, "import_module", boom)
    assert D._xla_module() is None


def test_cpu_threads_sets_and_restores_the_count():
    from labkit.devices import cpu_threads

    before = torch.get_num_threads()
    with cpu_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), cpu_threads(1):
        raise RuntimeError("the block failed")
    assert torch.get_num_threads() == before  # restored on an error too
    for bad, err in ((0, ValueError), (1.5, TypeError)):
        with pytest.raises(err, match=r"^n\b"), cpu_threads(bad):
            pass
