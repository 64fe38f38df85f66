"""Our CUDA selective scan's host side, which runs without a GPU: the library builds with nvcc where nvcc is, its
parameter block has the layout the Python side writes, and CPU tensors keep to the torch scans."""

import shutil

import pytest
import torch

from worker.engine import scan_cuda


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
    monkeypatch.setenv("MAMBAFT_SCAN_KERNEL", "mamba-ssm")
    assert not scan_cuda.available(u, A16, B)
