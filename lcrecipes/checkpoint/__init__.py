"""Training checkpoints: the backend's native state plus ``state.json``, saved atomically, verified on load.

``convert/`` (separate) turns native checkpoints into Hugging Face models.
"""

from lcrecipes.checkpoint.manager import CheckpointManager
from lcrecipes.checkpoint.state import TrainState, read_state
from lcrecipes.checkpoint.verify import CheckpointError, verify_checkpoint

__all__ = ["CheckpointError", "CheckpointManager", "TrainState", "read_state", "verify_checkpoint"]
