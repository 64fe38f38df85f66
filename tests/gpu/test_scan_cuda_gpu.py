"""On CUDA: our selective scan (worker/engine/scan_cuda.py) computes the reference scan's values and every
gradient (fp32, within rounding; bf16, cosine >= 0.999 against mamba-ssm's kernel), keeps packed documents apart,
and computes no gradient for frozen A, D and Δ bias."""

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

from worker.engine import scan_cuda  # noqa: E402
from worker.engine.scan import selective_scan_reference  # noqa: E402

pytestmark = pytest.mark.gpu

# Neither a multiple of the block's 64 channels nor of the 16-step tile.
BATCH, DIM, LENGTH, STATE = 2, 100, 257, 16
# Rows of 257 steps are read element by element; rows of 264 in 16-byte words, but for the last tile's 8 steps.
LENGTHS = pytest.mark.parametrize("length", [LENGTH, 264])
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _inputs(dtype: torch.dtype, seed: int = 0, dim: int = DIM, length: int = LENGTH, batch: int = BATCH) -> dict:
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rand(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g, device="cuda") * scale).to(dt).requires_grad_()

    return {
        "u": rand(batch, dim, length),
        "delta": rand(batch, dim, length, scale=0.5),
        "A": (-torch.rand(dim, STATE, generator=g, device="cuda") * 4 - 0.2).requires_grad_(),
        "B": rand(batch, STATE, length),
        "C": rand(batch, STATE, length),
        "D": rand(dim, dt=torch.float32),
        "z": rand(batch, dim, length),
        "delta_bias": rand(dim, scale=0.5, dt=torch.float32),
    }


def _grads(fn, x: dict, dout: torch.Tensor, **kwargs) -> tuple[torch.Tensor, dict]:
    leaves = {k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in x.items()}
    out = fn(*(leaves[k] for k in NAMES), **kwargs)
    out.backward(dout)
    return out.detach(), {k: v.grad for k, v in leaves.items() if v.requires_grad}


def _ours(*inputs, reset=None):
    assert scan_cuda.available(inputs[0], inputs[2], inputs[3])
    return scan_cuda.SelectiveScan.apply(*inputs, reset)


def _reference(*inputs, reset=None):
    return selective_scan_reference(*inputs, delta_softplus=True, reset=reset)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


@LENGTHS
def test_fp32_values_and_every_gradient_match_the_reference(length):
    x = _inputs(torch.float32, length=length)
    dout = torch.randn(BATCH, DIM, length, device="cuda")
    ours, ours_grads = _grads(_ours, x, dout)
    ref, ref_grads = _grads(_reference, x, dout)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert ours_grads.keys() == ref_grads.keys() == set(NAMES)
    for name in NAMES:
        torch.testing.assert_close(ours_grads[name], ref_grads[name], rtol=1e-3, atol=1e-3, msg=name)


@LENGTHS
def test_resets_keep_documents_apart(length):
    x = _inputs(torch.float32, seed=1, length=length)
    reset = torch.zeros(BATCH, length, dtype=torch.bool, device="cuda")
    reset[0, [0, 17, 100]] = True
    reset[1, [0, 255]] = True
    dout = torch.randn(BATCH, DIM, length, device="cuda")
    ours, ours_grads = _grads(_ours, x, dout, reset=reset)
    ref, ref_grads = _grads(_reference, x, dout, reset=reset)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    for name in NAMES:
        torch.testing.assert_close(ours_grads[name], ref_grads[name], rtol=1e-3, atol=1e-3, msg=name)
    # The second document of row 0 starts at 17: the outputs before it do not move when its inputs do.
    moved = {k: v.detach().clone() for k, v in x.items()}
    moved["u"][0, :, 17:] += 1.0
    again = _ours(*(moved[k] for k in NAMES), reset=reset)
    torch.testing.assert_close(again[0, :, :17], ours[0, :, :17], rtol=0, atol=0)


def test_frozen_A_D_and_bias_get_no_gradient():
    x = _inputs(torch.float32, seed=2)
    for name in ("A", "D", "delta_bias"):
        x[name].requires_grad_(False)
    _, grads = _grads(_ours, x, torch.randn(BATCH, DIM, LENGTH, device="cuda"))
    assert set(grads) == {"u", "delta", "B", "C", "z"}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_gradients_agree_with_mamba_ssm(dtype):
    pytest.importorskip("mamba_ssm")
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    x = _inputs(dtype, seed=3, dim=256, length=1024, batch=2)
    x["delta"] = (x["delta"].detach() * 0.2 - 2).requires_grad_()  # dt around softplus(-2): Mamba's range
    dout = torch.randn(2, 256, 1024, device="cuda").to(dtype)
    ours, ours_grads = _grads(_ours, x, dout)
    theirs, their_grads = _grads(selective_scan_fn, x, dout, delta_softplus=True)
    truth, true_grads = _grads(_reference, {k: v.detach().float().requires_grad_() for k, v in x.items()}, dout.float())
    report = {}
    for name in NAMES:
        ours_c, theirs_c = _cosine(ours_grads[name], true_grads[name]), _cosine(their_grads[name], true_grads[name])
        report[name] = (round(ours_c, 6), round(theirs_c, 6))
        assert ours_c >= 0.999 and ours_c >= theirs_c - 1e-3, (name, report)
    print("gradient cosine to fp32 (ours, mamba-ssm):", report)
    assert _cosine(ours, truth) >= 0.9999 and _cosine(theirs, truth) >= 0.9999
