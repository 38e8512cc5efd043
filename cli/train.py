"""``vitsearch train``: parse, call :func:`vitsearch.train.train`, print each epoch and the result."""

from __future__ import annotations

from pathlib import Path

import typer

from vitsearch.search.errors import BadQueryError, VitsearchError
from vitsearch.search.paths import printable
from vitsearch.train.config import DEFAULTS, LR_FINETUNE, LR_SCRATCH, ScratchConfig

from .common import DEVICE, app, fail, settings

SCRATCH = ScratchConfig()  # its defaults, shown in --help


@app.command(epilog="Docs: docs/guides/training.md")
def train(
    data_dir: Path = typer.Argument(
        ..., exists=True, file_okay=False, dir_okay=True, help="One subfolder of images per class."
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Folder to save the trained encoder to (a plain transformers "
        "model folder: use it with index --model OUT).",
    ),
    from_model: str | None = typer.Option(
        None, "--from", help="Fine-tune this checkpoint (hub id, folder or pulled model name)."
    ),
    scratch: bool = typer.Option(False, "--scratch", help="Train a new ViT from random weights, of the shape below."),
    patch_size: int | None = typer.Option(
        None, "--patch-size", min=1, help=f"--scratch: patch side in pixels (default {SCRATCH.patch_size})."
    ),
    dim: int | None = typer.Option(
        None, "--dim", min=1, help=f"--scratch: hidden size, the embedding dimension (default {SCRATCH.dim})."
    ),
    depth: int | None = typer.Option(
        None, "--depth", min=1, help=f"--scratch: transformer blocks (default {SCRATCH.depth})."
    ),
    heads: int | None = typer.Option(
        None, "--heads", min=1, help=f"--scratch: attention heads (default {SCRATCH.heads})."
    ),
    mlp_dim: int | None = typer.Option(
        None, "--mlp-dim", min=1, help=f"--scratch: MLP hidden units per block (default {SCRATCH.mlp_dim})."
    ),
    image_size: int | None = typer.Option(
        None, "--image-size", min=1, help=f"--scratch: input side in pixels (default {SCRATCH.image_size})."
    ),
    epochs: int = typer.Option(DEFAULTS.epochs, "--epochs", min=1, help="Passes over the training images."),
    batch_size: int = typer.Option(DEFAULTS.batch_size, "--batch-size", min=1, help="Images per step."),
    lr: float | None = typer.Option(
        None,
        "--lr",
        help="Peak learning rate (AdamW, warm-up then cosine "
        f"decay); default {LR_SCRATCH:g} with --scratch, {LR_FINETUNE:g} with --from.",
    ),
    val_split: float = typer.Option(
        DEFAULTS.val_split,
        "--val-split",
        min=0.0,
        max=0.99,
        help="Share of each class held out to validate (accuracy and retrieval figures per epoch).",
    ),
    objective: str = typer.Option(
        DEFAULTS.objective,
        "--objective",
        help="normalized-softmax (a cosine "
        "classifier on the CLS token, trains the angles search ranks by) or softmax "
        "(a linear classifier).",
    ),
    label_smoothing: float = typer.Option(
        DEFAULTS.label_smoothing, "--label-smoothing", min=0.0, max=0.99, help="Label smoothing of the cross-entropy."
    ),
    seed: int = typer.Option(DEFAULTS.seed, "--seed", help="Seeds the split, the initialisation and the augmentation."),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace a model folder that vitsearch wrote at --out (never a folder holding anything else).",
    ),
    device: str | None = DEVICE,
) -> None:
    """Train an encoder on labelled folders so that its CLS token retrieves by class.

    A classifier head on the CLS token is trained with cross-entropy (label smoothing), random
    resized crops and flips, AdamW with weight decay, warm-up and a cosine schedule
    (transformers' Trainer; on the GPU when there is one). Each epoch prints the training loss,
    the validation accuracy and the validation retrieval figures of `vitsearch eval` (mAP,
    recall@1, recall@10, and P@1, the share of queries whose first hit is of their class); with
    --from, epoch 0 is the pretrained encoder's own. The last epoch's encoder is saved to --out.
    """
    from vitsearch.train import train as run

    config = _scratch_config(
        from_model,
        scratch,
        patch_size=patch_size,
        dim=dim,
        depth=depth,
        heads=heads,
        mlp_dim=mlp_dim,
        image_size=image_size,
    )
    try:
        result = run(
            data_dir,
            out,
            from_model=from_model,
            scratch=config,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            val_split=val_split,
            objective=objective,
            label_smoothing=label_smoothing,
            seed=seed,
            device=device,
            overwrite=overwrite,
            settings=settings(device=device),
            on_epoch=lambda r: typer.echo(r.line(epochs)),
            on_failure=lambda p, r: typer.echo(f"skipped {printable(p)}: {r}", err=True),
        )
    except BadQueryError as exc:
        fail(str(exc), code=2)
    except VitsearchError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        typer.echo("\ninterrupted: nothing saved", err=True)
        raise typer.Exit(130) from None
    typer.echo(
        f"saved to {result.out_dir} ({len(result.classes)} classes, {result.train_images} training and "
        f"{result.val_images} validation images, {len(result.failures)} failed, {result.device}, "
        f"{result.seconds:.0f} s): vitsearch index DIR --model {result.out_dir}"
    )


def _scratch_config(from_model: str | None, scratch: bool, **shape: int | None) -> ScratchConfig | None:
    """The shape of the new ViT of ``--scratch`` (the sizes given, :class:`ScratchConfig`'s defaults
    for the rest), None with ``--from``; exactly one of the two must be given, and the sizes only
    with ``--scratch``.

    Raises:
        typer.BadParameter: both or neither of --from and --scratch, or sizes with --from.
    """
    if scratch and from_model:
        raise typer.BadParameter("give --from MODEL or --scratch, not both", param_hint="--from/--scratch")
    if not scratch and not from_model:
        raise typer.BadParameter(
            "give --from MODEL (fine-tune) or --scratch (a new ViT)", param_hint="--from/--scratch"
        )
    given = {name: value for name, value in shape.items() if value is not None}
    if from_model and given:
        raise typer.BadParameter(
            f"{', '.join('--' + k.replace('_', '-') for k in given)} set the shape of a new "
            f"ViT (--scratch); a checkpoint keeps its own (index --image-size runs it at "
            f"another input size)",
            param_hint="--from",
        )
    return ScratchConfig(**given) if scratch else None  # ScratchConfig's defaults for the rest
