"""The model and its training loop: a small open_clip CLIP (or a published one) and the one
ClipLoss training loop every stage uses (pre-training, poisoning, defenses)."""

from ubtlib.clip.model import ModelConfig, create, pick_device
from ubtlib.clip.train import TrainConfig, train_clip

__all__ = ["ModelConfig", "TrainConfig", "create", "pick_device", "train_clip"]
