"""PyTorch models only: the eight DeepRecInfra models, their configs, synthetic inputs, and the
contract (`base`) any servable model meets.

Input layout of the zoo: pooled id inputs are `[B, L]` for one table or `[B, T, L]` for a group
of T equal tables (`sparse`), each table its own `nn.EmbeddingBag(mode="sum")` under
`sparse_arch`; DIN/DIEN take a behaviour sequence `hist [B, S]` and its length `hist_len [B]`.
"""

from recsched.models.base import (
    InputError,
    Inputs,
    InputSpec,
    ModelAdapter,
    batch_size,
    concat_rows,
    slice_rows,
    validate_inputs,
)
from recsched.models.registry import (
    ModelTooLarge,
    list_models,
    load_model,
    model_config,
    model_memory_bytes,
)

__all__ = [
    "InputError",
    "InputSpec",
    "Inputs",
    "ModelAdapter",
    "ModelTooLarge",
    "batch_size",
    "concat_rows",
    "list_models",
    "load_model",
    "model_config",
    "model_memory_bytes",
    "slice_rows",
    "validate_inputs",
]
