"""The model card (``README.md`` with Hub metadata) and the loss plot of a run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .config import shipped_dir

log = logging.getLogger(__name__)

_METHOD_LABEL = {"full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA (4-bit NF4 base)"}


def card_metadata(run: dict[str, Any], metrics: dict[str, Any], *, model_name: str):
    """The YAML header as ``ModelCardData``: what the Hub indexes and filters on."""
    from huggingface_hub import EvalResult, ModelCardData

    eval_results = None
    if metrics.get("eval_loss_best") is not None:
        eval_results = [
            EvalResult(
                task_type="text-generation",
                dataset_type=run["data"].get("hub_dataset") or "custom",
                dataset_name=run["data"].get("hub_dataset") or Path(str(run["data"]["source"])).name,
                dataset_split="eval",
                metric_type="loss",
                metric_name="eval loss",
                metric_value=round(float(metrics["eval_loss_best"]), 4),
            )
        ]
    return ModelCardData(
        base_model=hub_base_id(run),
        library_name="peft" if run["adapter"] else "transformers",
        pipeline_tag="text-generation",
        license=run.get("base_license") or None,
        tags=["tunekit", "trl", "sft", run["method"]] + (["lora"] if run["method"] == "qlora" else []),
        datasets=[run["data"]["hub_dataset"]] if run["data"].get("hub_dataset") else None,
        eval_results=eval_results,
        model_name=model_name,
    )


def hub_base_id(run: dict[str, Any]) -> str | None:
    """The base as a Hub repo id, or None when it was a local folder: the Hub's ``base_model``
    field (and the model tree built from it) only understands repo ids."""
    if run.get("embedded_base"):
        from .models import EMBEDDED_ID

        return EMBEDDED_ID
    name = str(run["base"])
    if run.get("base_path") or name.startswith((".", "/", "~")) or name.count("/") > 1:
        return None
    return name


def render_card(run: dict[str, Any], metrics: dict[str, Any], *, repo_id: str | None = None,
                space_id: str | None = None, endpoint: str = "https://huggingface.co"):
    """Render the card from ``templates/model_card.md.jinja``.

    Args:
        run: the run description (``tunekit.json``).
        metrics: the run's metrics (``metrics.json``).
        repo_id: the Hub repo the card will live in (used in the usage snippets).
        space_id: a demo Space to link, if any.
        endpoint: Hub address for links.
    """
    from huggingface_hub import ModelCard

    name = repo_id or f"{run['base'].split('/')[-1]}-{run['method']}"
    options = run.get("options", {})
    hyper = [("epochs", metrics.get("epochs")), ("learning rate", options.get("lr") or _default_lr(run)),
             ("batch size", f"{options.get('batch_size')} x {options.get('grad_accum')} accumulation"),
             ("max length", options.get("max_length")), ("seed", options.get("seed"))]
    if run["adapter"]:
        hyper = [("LoRA r / alpha", f"{options.get('r')} / {options.get('alpha')}"),
                 ("LoRA dropout", options.get("dropout")), ("target modules", options.get("target_modules")),
                 ("DoRA / rsLoRA", f"{options.get('use_dora')} / {options.get('use_rslora')}")] + hyper
    results = [(k, _fmt(metrics.get(k))) for k in (
        "train_loss_first", "train_loss_last", "eval_loss_first", "eval_loss_best", "steps",
        "trainable_params", "total_params", "wall_seconds", "tokens_per_second", "peak_memory_bytes")
        if metrics.get(k) is not None]
    masking = ("assistant turns only (content + end-of-turn token)" if run.get("train_on") == "assistant"
               else "every token")
    example = ((run.get("example_prompts") or ["Hello! What can you do?"])[0]
               .replace('"', '\\"').replace("\n", " "))
    template = shipped_dir("templates") / "model_card.md.jinja"
    return ModelCard.from_template(
        card_metadata(run, metrics, model_name=name),
        template_path=str(template),
        model_name=name,
        summary=f"Fine-tuned from `{run['base']}` on {run['data']['train_rows']} examples.",
        method_label=_METHOD_LABEL[run["method"]],
        base=run["base"],
        base_url=f"{endpoint}/{hub_base_id(run)}" if hub_base_id(run) else None,
        adapter=run["adapter"],
        repo_id=repo_id or name,
        space_id=space_id,
        space_url=f"{endpoint}/spaces/{space_id}" if space_id else None,
        example_prompt=example,
        hyperparameters=hyper,
        template_name=run["template"]["name"],
        template_sha256=run["template"]["sha256"],
        masking=masking,
        data=run["data"],
        metrics=metrics,
        results=results,
        license=run.get("base_license"),
    )


def write_card(out: Path, run: dict[str, Any], metrics: dict[str, Any], **kwargs: Any) -> Path:
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


def _default_lr(run: dict[str, Any]) -> float:
    from .methods import default_lr

    return default_lr(run["method"])


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and value > 10_000:
        return f"{value:,}"
    return value
