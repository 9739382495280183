"""Each fine-tuning method's training function, by ``method`` (:data:`finetune.config.METHODS`): the
one table ``make finetune`` and the workflows' stages dispatch through."""

from __future__ import annotations

from finetune.config import FinetuneConfig
from finetune.dpok import train_dpok
from finetune.draft import train_draft
from finetune.preference import train_on_labels
from finetune.run import FinetuneResult
from finetune.rwl import train_rwl

TRAIN = {"dpok": train_dpok, "rwl": train_rwl, "draft": train_draft, "dpo": train_on_labels, "kto": train_on_labels}


def train(cfg: FinetuneConfig) -> FinetuneResult:
    """Run ``cfg.method`` as configured."""
    return TRAIN[cfg.method](cfg)
