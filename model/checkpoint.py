"""Checkpoints: one `.safetensors` file holding the weights and, in its header, JSON metadata.

The metadata (`playmodel` key of the safetensors header) records the model config, the
state-schema version of `core.game_state`, the checkpoint format version, and free-form
training provenance (data, steps, command). Loading never unpickles: safetensors reads raw
tensors and the metadata is plain JSON. Writes are atomic (temporary file + rename).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from core import game_state as gs
from core.atomic_file import atomic_path
from model.config import ModelConfig
from model.motion_prior import upgrade_prior_tensors
from model.world_model import WorldModel

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
METADATA_KEY = "playmodel"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names the file and the field."""


def save_checkpoint(
    path: str | Path, model: WorldModel, provenance: dict[str, Any] | None = None
) -> None:
    meta = {
        "format_version": FORMAT_VERSION,
        "schema_version": gs.SCHEMA_VERSION,
        "model_config": model.config.to_dict(),
        "num_parameters": model.num_parameters(),
        "provenance": provenance or {},
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta)})


def read_metadata(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({e})") from e
    if METADATA_KEY not in header:
        raise CheckpointError(f"{path}: safetensors file without Play the Model metadata")
    return json.loads(header[METADATA_KEY])


def read_weights(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """A checkpoint's model config, raw tensors and metadata, without building its model;
    a checkpoint of another state-schema version is refused."""
    meta = read_metadata(path)
    if meta.get("schema_version") != gs.SCHEMA_VERSION:
        raise CheckpointError(
            f"{path}: schema_version is {meta.get('schema_version')}, this code reads "
            f"{gs.SCHEMA_VERSION} (the game-state fields differ; retrain or convert it)"
        )
    try:
        config = ModelConfig.from_dict(meta["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad model_config in metadata ({e})") from e
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
    return config, upgrade_prior_tensors(tensors), meta


def load_checkpoint(
    path: str | Path,
    expect_config: ModelConfig | None = None,
    device: torch.device | str = "cpu",
) -> tuple[WorldModel, dict[str, Any]]:
    """Build the model a checkpoint describes and load its weights strictly.

    With `expect_config`, a checkpoint of another config is refused, naming the fields that
    differ. A checkpoint of another state-schema version is always refused.
    """
    path = Path(path)
    config, tensors, meta = read_weights(path, device)
    if expect_config is not None and config != expect_config:
        ours, theirs = expect_config.to_dict(), config.to_dict()
        diff = ", ".join(
            f"{k}: {theirs[k]} (expected {ours[k]})" for k in ours if ours[k] != theirs[k]
        )
        raise CheckpointError(f"{path}: model config differs: {diff}")

    model = WorldModel(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        parts = [
            f"missing {missing[:5]}" if missing else "",
            f"unexpected {unexpected[:5]}" if unexpected else "",
        ]
        parts.append(
            "shape of "
            + ", ".join(
                f"{k} {tuple(tensors[k].shape)} vs {tuple(expected[k].shape)}" for k in shapes[:5]
            )
            if shapes
            else ""
        )
        raise CheckpointError(
            f"{path}: weights do not match the config: {'; '.join(p for p in parts if p)}"
        )
    model.load_state_dict(tensors, strict=True)
    return model.to(device), meta


# The bundled default model (assets/checkpoints/README.md says how it was made).
DEMO_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets/checkpoints/demo.safetensors"


def load_model(
    checkpoint: str | Path | None, config: str | None, device: torch.device | str = "cpu"
) -> tuple[WorldModel, str]:
    """The checkpoint given, else the bundled demo checkpoint, else (with a warning) an
    untrained model of `config`; with a name for it to be reported by."""
    if checkpoint is None and config is None and DEMO_CHECKPOINT.exists():
        checkpoint = DEMO_CHECKPOINT
    if checkpoint is not None:
        model, _ = load_checkpoint(checkpoint, device=device)
        return model, str(checkpoint)
    from model.config import load_config

    name = config or "mamba2-small"
    log.warning("no checkpoint: playing an UNTRAINED %s model with random weights", name)
    torch.manual_seed(0)
    return WorldModel(load_config(name)).to(device), f"untrained {name}"
