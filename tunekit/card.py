"""The model card (``README.md`` with Hub metadata) and the loss plot of a run."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import methods
from .config import shipped_dir
from .hubid import looks_like_path
from .record import Metrics, RunInfo

if TYPE_CHECKING:
    from huggingface_hub import ModelCard, ModelCardData

log = logging.getLogger(__name__)


def card_metadata(run: RunInfo, metrics: Metrics, *, model_name: str) -> "ModelCardData":
    """The YAML header as ``ModelCardData``: what the Hub indexes and filters on.

    Args:
        run: the run record (``tunekit.json``); a plain dict is read as one.
        metrics: the run's metrics (``metrics.json``); a plain dict is read as one.
        model_name: the card's title (the repo id, when there is one).

    Returns:
        The metadata: base model, library, license, tags, data sets and the eval loss.
    """
    from huggingface_hub import ModelCardData

    data = run.data
    hub_dataset = data.hub_dataset if data else None
    return ModelCardData(
        base_model=hub_base_id(run),
        library_name="peft" if run.adapter else "transformers",
        pipeline_tag="text-generation",
        license=run.base_license or None,
        tags=["tunekit", "trl", run.objective, run.method] + (["lora"] if run.method == "qlora" else []),
        datasets=[hub_dataset] if hub_dataset else None,
        eval_results=_eval_results(run, metrics),
        model_name=model_name,
    )


def _eval_results(run: RunInfo, metrics: Metrics) -> list | None:
    from huggingface_hub import EvalResult

    if metrics.eval_loss_best is None:
        return None
    return [
        EvalResult(
            task_type="text-generation",
            dataset_type=run.data.hub_dataset or "custom",
            dataset_name=run.data.hub_dataset or Path(str(run.data.source)).name,
            dataset_split="eval",
            metric_type="loss",
            metric_name="eval loss",
            metric_value=round(float(metrics.eval_loss_best), 4),
        )
    ]


def hub_base_id(run: RunInfo) -> str | None:
    """The base as a Hub repo id, or None when it was a local folder: the Hub's ``base_model``
    field (and the model tree built from it) only understands repo ids.

    Args:
        run: the run record; a plain dict is read as one.
    """
    if run.embedded_base:
        from .models import EMBEDDED_ID

        return EMBEDDED_ID
    name = str(run.base)
    if run.base_path or looks_like_path(name):
        return None
    return name


def render_card(run: RunInfo, metrics: Metrics, *, repo_id: str | None = None,
                space_id: str | None = None, endpoint: str = "https://huggingface.co") -> "ModelCard":
    """Render the card from ``templates/model_card.md.jinja``.

    Args:
        run: the run record (``tunekit.json``) of a run tunekit trained; a plain dict is read
            as one.
        metrics: the run's metrics (``metrics.json``); a plain dict is read as one.
        repo_id: the Hub repo the card will live in (used in the usage snippets).
        space_id: a demo Space to link, if any.
        endpoint: Hub address for links.

    Returns:
        The card (``str(card)`` is the README text). It names a local base or data file by its
        name, never by its path (:meth:`RunInfo.published`).
    """
    from huggingface_hub import ModelCard

    run, metrics = run.published(), metrics.published()  # a card never shows local paths or secrets
    name = repo_id or f"{run.base.split('/')[-1]}-{run.method}"
    base_id = hub_base_id(run)
    example = ((run.example_prompts or ["Hello! What can you do?"])[0]
               .replace('"', '\\"').replace("\n", " "))
    return ModelCard.from_template(
        card_metadata(run, metrics, model_name=name),
        template_path=str(shipped_dir("templates") / "model_card.md.jinja"),
        model_name=name,
        summary=_summary(run),
        trainer=TRAINER_NAMES.get(run.objective, "SFTTrainer"),
        objective=run.objective,
        objective_label=OBJECTIVE_LABELS.get(run.objective, run.objective),
        method_label=methods.get(run.method).title,
        base=run.base,
        base_url=f"{endpoint}/{base_id}" if base_id else None,
        adapter=run.adapter,
        repo_id=repo_id or name,
        space_id=space_id,
        space_url=f"{endpoint}/spaces/{space_id}" if space_id else None,
        example_prompt=example,
        hyperparameters=_hyperparameters(run, metrics),
        template_name=run.template.name,
        template_sha256=run.template.sha256,
        template_tools=run.template.tools,  # the template's tool-call format (issue 18)
        masking=("assistant turns only (content + end-of-turn token)" if run.train_on == "assistant"
                 else "every token"),
        data=run.data,
        metrics=metrics,
        results=[(k, _fmt(getattr(metrics, k))) for k in _RESULT_KEYS if getattr(metrics, k) is not None],
        license=run.base_license,
    )


# The metrics the card's Results table lists, in this order (preference metrics when present).
_RESULT_KEYS = ("train_loss_first", "train_loss_last", "eval_loss_first", "eval_loss_best",
                "reward_accuracy_first", "reward_accuracy_last", "reward_margin_first", "reward_margin_last",
                "logps_chosen_first", "logps_chosen_last", "logps_rejected_first", "logps_rejected_last", "steps",
                "trainable_params", "total_params", "wall_seconds", "tokens_per_second", "peak_memory_bytes")

TRAINER_NAMES = {"sft": "SFTTrainer", "dpo": "DPOTrainer", "kto": "KTOTrainer"}
OBJECTIVE_LABELS = {"sft": "supervised fine-tuning (SFT)", "dpo": "preference tuning (DPO)",
                    "kto": "preference tuning (KTO)"}


def _summary(run: RunInfo) -> str:
    rows = run.data.train_rows
    what = {"dpo": f"{rows} preference pairs", "kto": f"{rows} labelled replies"}.get(run.objective, f"{rows} examples")
    return f"Fine-tuned from `{run.base}` on {what}."


def _hyperparameters(run: RunInfo, metrics: Metrics) -> list[tuple[str, Any]]:
    option = run.option
    hyper = [("epochs", metrics.epochs), ("learning rate", option("lr") or methods.get(run.method).lr(run.objective)),
             ("batch size", f"{option('batch_size')} x {option('grad_accum')} accumulation"),
             ("max length", option("max_length")), ("seed", option("seed"))]
    if run.preference:
        hyper = [("objective", OBJECTIVE_LABELS.get(run.objective, run.objective)),
                 ("beta", run.preference.get("beta")), ("reference", run.preference.get("reference"))] + \
            ([("loss", " + ".join(run.preference["loss"]))] if run.preference.get("loss") else []) + hyper
    if run.adapter:
        hyper = [("LoRA r / alpha", f"{option('r')} / {option('alpha')}"),
                 ("LoRA dropout", option("dropout")), ("target modules", option("target_modules")),
                 ("DoRA / rsLoRA", f"{option('use_dora')} / {option('use_rslora')}")] + hyper
    return hyper


def write_card(out: str | os.PathLike, run: RunInfo, metrics: Metrics, **kwargs: Any) -> Path:
    """Render the card (see :func:`render_card`) and save it as ``out/README.md``.

    Returns:
        The README's path.
    """
    path = Path(out) / "README.md"
    render_card(run, metrics, **kwargs).save(path)
    return path


def plot_loss(log_history: list[dict[str, Any]], path: Path) -> Path | None:
    """Train and eval loss against update step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; never open windows from a library
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", color="#1f77b4")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", color="#ff7f0e")
    ax.set_xlabel("update step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and value > 10_000:
        return f"{value:,}"
    return value


