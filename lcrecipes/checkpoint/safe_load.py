"""Loading ``torch.save`` files that may come from elsewhere without running code hidden in them.

Every load is ``torch.load(weights_only=True)``: tensors, containers and primitives only, plus an allow-list of
DeepSpeed's checkpoint classes (ZeRO stage enum, loss scalers, slice addresses) that its native files hold.
Anything else (a pickle payload) is refused with a one-line error naming the file and the global. Used by the
DeepSpeed backend's resume and by the DeepSpeed -> HF converter.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from lcrecipes.checkpoint.verify import CheckpointError

_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def deepspeed_safe_globals() -> list:
    """The non-tensor classes a DeepSpeed ZeRO checkpoint (``*_model_states.pt``, ``*_optim_states.pt``) pickles:
    the stage enum and loss scalers (stages 1-3), and the parameter slice addresses of stages 1-2 (``numel``,
    ``start``: two ints)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def load_weights_only(f: str | Path, *args, error: type[Exception] = CheckpointError, **kwargs):
    """``torch.load(f, *args, weights_only=True, **kwargs)`` with :func:`deepspeed_safe_globals` allowed; a global
    outside the allow-list or a damaged file raises ``error`` (one line naming ``f``)."""
    with torch.serialization.safe_globals(deepspeed_safe_globals()):
        try:
            return torch.load(f, *args, weights_only=True, **kwargs)
        except pickle.UnpicklingError as e:
            found = _GLOBAL.search(str(e))
            what = f"global {found.group(1)}" if found else str(e).splitlines()[0]
            raise error(f"{f}: refused to unpickle {what} (only tensors and DeepSpeed's checkpoint classes are "
                        "loaded; the file is damaged or not from a trusted source)") from e
        except (RuntimeError, OSError, EOFError, ValueError) as e:  # a torn or damaged file
            raise error(f"{f}: cannot load ({type(e).__name__}: {str(e).splitlines()[0][:300]})") from e
