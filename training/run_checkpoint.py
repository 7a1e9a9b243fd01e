"""Saving and resuming a training run's state in its run folder.

`last.state.pt` holds the weights, optimiser, gradient scaler, step, best validation loss and
random state; `last.safetensors` the same weights, for evaluation and play. Every write is
atomic, and `--resume` reads only `last.state.pt`, one file written with one rename, so a kill
between two writes cannot pair one step's weights with another's optimiser.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch

from core.atomic_file import atomic_path, remove_stale_temporaries
from model.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from model.config import ModelConfig
from model.world_model import WorldModel
from training.run_config import TrainConfig

log = logging.getLogger(__name__)
STATE_FILE = "last.state.pt"
WEIGHTS_FILE = "last.safetensors"


def save_run_state(
    run_dir: Path,
    step: int,
    best_val: float,
    model: WorldModel,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
) -> None:
    """Write `last.state.pt`, then `last.safetensors`, each with one rename."""
    # The weights go into the state file too: it is the one unit --resume reads, replaced
    # by a single rename. With the weights only in last.safetensors, a kill -9 between the
    # two writes would leave step-M weights beside step-N optimiser state, and --resume
    # would train on from the mismatched pair without a word.
    state = {
        "step": step,
        "best_val": best_val,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    with atomic_path(run_dir / STATE_FILE) as tmp:
        torch.save(state, tmp)
    save_run_weights(run_dir, step, model, config)


def save_run_weights(run_dir: Path, step: int, model: WorldModel, config: TrainConfig) -> None:
    provenance = {"step": step, "train": config.to_dict()}
    save_checkpoint(run_dir / WEIGHTS_FILE, model, provenance)


def resume_run_state(
    run_dir: Path,
    model: WorldModel,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
    model_config: ModelConfig,
    is_main: bool = True,
) -> tuple[int, float]:
    """Load `last.state.pt` into the model, optimiser, scaler and torch's random state, and
    return its step and best validation loss. Raises CheckpointError, naming the files and the
    steps, when the run folder cannot be resumed exactly. Only the main rank (`is_main`)
    writes to the run folder."""
    state_path, weights_path = run_dir / STATE_FILE, run_dir / WEIGHTS_FILE
    state = load_run_state(state_path)
    step = state["step"]
    if "model" in state:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:  # load_state_dict lists missing, unexpected, shapes
            raise CheckpointError(
                f"{state_path}: weights do not match model {config.model!r}: {e}"
            ) from e
        weights_step = saved_weights_step(weights_path)
        if weights_step != step:
            log.warning(
                "%s holds step %s but %s holds step %d (the run was stopped between the "
                "two writes): resuming from step %d and writing its weights to %s",
                weights_path,
                "(none)" if weights_step is None else weights_step,
                state_path,
                step,
                step,
                weights_path,
            )
            if is_main:
                save_run_weights(run_dir, step, model, config)
    else:
        # A run folder written before the state file held the weights: the pair can only
        # be trusted when both name the same step.
        saved, meta = load_checkpoint(weights_path, model_config)
        weights_step = meta.get("provenance", {}).get("step")
        if weights_step != step:
            raise CheckpointError(
                f"cannot resume {run_dir}: {weights_path} holds the weights of "
                f"step {weights_step} but {state_path} the optimiser state of step "
                f"{step} (the run was stopped between the two writes, and this older run "
                "folder keeps no weights in its state file). Start a new run with "
                f"`init_from: {weights_path}` to keep the weights with a fresh optimiser"
            )
        model.load_state_dict(saved.state_dict())
    optimizer.load_state_dict(state["optimizer"])  # moves its tensors to the params
    if state.get("scaler"):  # empty when the scaler is off (and in older runs)
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    if is_main and (stale := remove_stale_temporaries(run_dir)):
        log.info("removed %d partial files a killed checkpoint write left", stale)
    log.info("resumed %s at step %d", run_dir, step)
    return step, state["best_val"]


def load_run_state(path: Path) -> dict:
    """The training state file at `path`, checked for the keys a resume needs."""
    # weights_only: tensors and plain containers only, never arbitrary objects. The only
    # randomness in a step is torch's (batches are a pure function of seed and step), and
    # it is the same on every rank.
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file (nothing to resume)") from None
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{path}: not a training state file ({e})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a training state file")
    missing = [k for k in ("step", "best_val", "optimizer", "torch_rng") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: training state without {missing}")
    return state


def saved_weights_step(path: Path) -> int | None:
    """The step the weights file at `path` was saved at; None when it is missing or
    unreadable."""
    try:
        return read_metadata(path).get("provenance", {}).get("step")
    except CheckpointError:
        return None
