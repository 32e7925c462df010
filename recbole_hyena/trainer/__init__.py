from recbole_hyena.trainer.trainer import (
    SafeCheckpointMixin,
    load_checkpoint,
    with_safe_checkpoints,
)

__all__ = ["SafeCheckpointMixin", "load_checkpoint", "with_safe_checkpoints"]
