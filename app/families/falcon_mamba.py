"""Falcon-Mamba (transformers' `falcon_mamba`): Mamba's layers with a weightless RMSNorm on dt, B and C."""

from app.families.family import Family
from app.families.mamba import MAMBA, parameter_count

FALCON_MAMBA = Family(
    model_type="falcon_mamba",
    lora_targets=MAMBA.lora_targets,
    default_targets=MAMBA.default_targets,
    kernel_read_targets=MAMBA.kernel_read_targets,
    ssm_params=("A_log", "D", "dt_proj.bias"),
    # The companion structures are Mamba's own forward; Falcon-Mamba has the stock diagonal state only.
    variant_field=MAMBA.variant_field,
    variants=MAMBA.variants[:1],
    hub_marks=("falcon-mamba", "falcon_mamba", "falconmamba"),
    # Its norms on dt, B and C hold no parameters, so it counts as Mamba of the same shape.
    parameter_count=parameter_count,
)
