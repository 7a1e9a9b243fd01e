"""Where a training run's scalars go besides metrics.jsonl: TensorBoard and wandb, each used
only when its package is installed."""

from __future__ import annotations

import logging
from pathlib import Path

from core.atomic_file import atomic_path
from training.run_config import TrainConfig

log = logging.getLogger(__name__)


def summary_writer(run_dir: Path):
    """A TensorBoard writer logging into the run folder; None when tensorboard is not
    installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed; logging to metrics.jsonl only")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def wandb_run(config: TrainConfig, run_dir: Path):
    """A wandb run named after the run folder; a resumed run continues the same wandb run (its
    id is kept in `wandb_id` in the run folder). None when wandb is not installed."""
    try:
        import wandb
    except ImportError:
        log.warning("wandb is enabled but not installed (pip install wandb); not logging to it")
        return None
    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text(encoding="utf-8").strip() if id_file.exists() else None
    run = wandb.init(
        project=config.wandb_project,
        name=run_dir.name,
        dir=str(run_dir),
        config=config.to_dict(),
        id=run_id,
        resume="allow",
    )
    if run_id is None:
        with atomic_path(id_file) as tmp:
            tmp.write_text(str(run.id), encoding="utf-8")
    return run
