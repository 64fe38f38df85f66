"""Our CUDA selective scan's host side, which runs without a GPU: the library builds with nvcc where nvcc is, its
parameter block has the layout the Python side writes, and CPU tensors keep to the torch scans."""

import shutil

import pytest
import torch

from worker.engine import scan_cuda
from worker.engine.scan import selective_scan_reference


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_the_library_builds_and_its_parameter_layout_matches(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMBAFT_KERNEL_DIR", str(tmp_path))
    path = scan_cuda.build("sm_90")
    assert path == scan_cuda.library_path("sm_90") and path.parent == tmp_path
    lib = scan_cuda.load(path)  # raises if ScanParams and _Params differ
    assert lib.mambaft_scan_block_channels() == 64 and lib.mambaft_scan_tile() == 16


def test_a_changed_source_gets_a_library_of_its_own(tmp_path, monkeypatch):
    source = tmp_path / "selective_scan.cu"
    source.write_text("// one\n")
    monkeypatch.setattr(scan_cuda, "SOURCE", source)
    first = scan_cuda.library_path("sm_90")
    source.write_text("// two\n")
    assert scan_cuda.library_path("sm_90") != first


def test_cpu_tensors_and_other_state_sizes_keep_to_the_torch_scans(monkeypatch):
    u, A16, B = torch.zeros(1, 4, 8), torch.zeros(4, 16), torch.zeros(1, 16, 8)
    assert not scan_cuda.available(u, A16, B)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(scan_cuda, "_library", lambda device_index: object())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert scan_cuda.available(u, A16, B)
    assert not scan_cuda.available(u, torch.zeros(4, 8), torch.zeros(1, 8, 8))
    assert not scan_cuda.available(u, A16, torch.zeros(1, 2, 16, 8))  # two groups of B
    # What a Mamba mixer asks before taking packed documents through the fused path, before B exists.
    assert scan_cuda.takes(u, 16) and not scan_cuda.takes(u, 8)
    monkeypatch.setenv("MAMBAFT_SCAN_KERNEL", "mamba-ssm")
    assert not scan_cuda.available(u, A16, B) and not scan_cuda.takes(u, 16)


def test_the_autograd_function_keeps_what_the_kernel_reads_and_gives_gradients_shaped_as_its_inputs(monkeypatch):
    """The kernel's two entry points stand in as the reference scan on the CPU, so what runs is the wrapper: under
    autocast a norm leaves delta, B and C fp32 beside bf16 u; it must keep them as the kernel reads them (bf16,
    half the bytes) and hand back gradients in each input's dtype and shape."""

    def kernel_forward(u, delta, A, B, C, D, z, delta_bias, reset=None):
        reset = reset.bool() if reset is not None else None
        y = selective_scan_reference(u, delta, A, B, C, D, None, delta_bias, reset=reset)
        return y, (y.float() * torch.nn.functional.silu(z.float())).to(u.dtype)

    def kernel_backward(u, delta, A, B, C, D, z, delta_bias, dout, y, *, reset, want_A, want_D, want_delta_bias):
        leaves = [t.detach().float().requires_grad_() for t in (u, delta, A, B, C, D, z, delta_bias)]
        with torch.enable_grad():  # autograd runs a backward with grad mode off
            out = selective_scan_reference(*leaves, reset=reset.bool() if reset is not None else None)
            g = torch.autograd.grad(out, leaves, dout.float())
        return scan_cuda.ScanGrads(
            du=g[0], ddelta=g[1], dA=g[2] if want_A else None, dB=g[3], dC=g[4], dD=g[5] if want_D else None,
            dz=g[6], ddelta_bias=g[7] if want_delta_bias else None, out_z=None,
        )  # fmt: skip

    monkeypatch.setattr(scan_cuda, "forward", kernel_forward)
    monkeypatch.setattr(scan_cuda, "backward", kernel_backward)
    gen = torch.Generator().manual_seed(0)
    batch, dim, length = 2, 6, 20
    u = torch.randn(batch, dim, length, generator=gen).bfloat16().requires_grad_()
    delta = (torch.randn(batch, dim, length, generator=gen) * 0.5).requires_grad_()  # fp32, as a norm leaves it
    A = (-torch.rand(dim, 16, generator=gen) - 0.5).requires_grad_(False)  # frozen, as under LoRA
    B = torch.randn(batch, 1, 16, length, generator=gen).requires_grad_()  # mamba-ssm's grouped layout, fp32
    C = torch.randn(batch, 16, length, generator=gen).requires_grad_()
    D = torch.randn(dim, generator=gen).requires_grad_()
    z = torch.randn(batch, dim, length, generator=gen).bfloat16().requires_grad_()
    delta_bias = torch.randn(dim, generator=gen).requires_grad_()
    reset = torch.zeros(batch, length, dtype=torch.bool)
    reset[0, 7] = True
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = scan_cuda.SelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, reset)
    by_time = [t for t in saved if t.dim() == 3]  # u, delta, B, C, z and y
    assert len(by_time) == 6 and all(t.dtype == torch.bfloat16 for t in by_time)
    out.float().square().sum().backward()
    for name, t in {"u": u, "delta": delta, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}.items():
        assert t.grad is not None and t.grad.dtype == t.dtype and t.grad.shape == t.shape, name
    assert A.grad is None
    # The values: the reference's gradients for the inputs as the kernel read them.
    read = [t.detach() for t in scan_cuda.as_read(u, delta, A, B, C, D, z, delta_bias)[:8]]
    leaves = [t.float().requires_grad_() for t in read]
    expected = torch.autograd.grad(
        (kernel_forward(*[t.to(read[i].dtype) for i, t in enumerate(leaves)], reset=reset)[1]).float().square().sum(),
        leaves,
        allow_unused=True,
    )
    # to bf16 rounding: the wrapper's out_z, and so dout, are bf16
    for got, want in ((u.grad, expected[0]), (delta.grad, expected[1]), (B.grad[:, 0], expected[3])):
        assert torch.nn.functional.cosine_similarity(got.double().flatten(), want.double().flatten(), dim=0) > 0.9999
