"""On CUDA: packed documents stay apart through the kernels too (Mamba: the selective scan with resets through
its inputs and causal-conv1d's seq_idx; Mamba-2: the fused kernel's seq_idx; the fused layer loop; the hybrids'
own loops and attention)."""

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("mamba_ssm")

from tests.engine.test_packing import FAMILIES_TESTED, assert_each_document_as_alone, tiny_lm  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("model_type", FAMILIES_TESTED)
def test_a_packed_row_gives_each_document_its_own_logits_loss_and_gradients_on_cuda(model_type: str) -> None:
    # fp32 kernels sum in another order than the model alone: agreement to rounding, not bit for bit.
    assert_each_document_as_alone(tiny_lm(model_type).cuda(), atol=1e-4)
