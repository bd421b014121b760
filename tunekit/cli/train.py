"""``tunekit train | preview | templates | chat``: training a model and looking at what it learns
from. ``tunekit train`` flags are generated from :class:`tunekit.options.Options`, so the CLI and
``tunekit.finetune`` share names, defaults and help text."""

from __future__ import annotations

import argparse
import sys

from .common import add_config_flags, add_option_flags, options_from, pop_data


def train(args: argparse.Namespace) -> int:
    """``tunekit train``: :func:`tunekit.finetune` (or, with ``--dry-run``, its plan only)."""
    options = options_from(args)
    data = pop_data(args, options, "train")
    if args.dry_run:
        from ..train import plan

        print(plan(data, **options).describe())
        return 0
    launched = maybe_launch(args, data, options)
    if launched is not None:
        return launched
    from ..train import finetune

    result = finetune(data, **options)
    m = result.metrics
    objective = result.run.objective
    what = "" if objective == "sft" else f" ({objective})"
    print(f"saved {result.method}{what} fine-tune of {result.base} to {result.output_dir}")
    if result.run.method_choice:
        print(f"  method='auto' chose {result.run.method_choice['reason']}")
    if objective == "sft":
        scored = f"eval loss {m.eval_loss_first} -> {m.eval_loss_best}"
    else:
        scored = f"reward accuracy {m.reward_accuracy_first} -> {m.reward_accuracy_last}, " \
                 f"margin {m.reward_margin_first} -> {m.reward_margin_last}"
    print(f"  {scored}  |  {m.steps} steps in {m.wall_seconds} s, {m.tokens_per_second} tokens/s")
    if result.url:
        print(f"  pushed to {result.url}")
    return 0


def maybe_launch(args: argparse.Namespace, data, options: dict) -> int | None:
    """Relaunch ``tunekit train`` in ``--nproc`` processes; None when this process should train
    itself (one process, or already a launched worker)."""
    from ..launch import in_distributed_run, launch_train

    nproc = args.nproc or 1
    if in_distributed_run() or (nproc == 1 and not args.accelerate_config):
        return None
    return launch_train(data, options, nproc=nproc, config_file=args.accelerate_config, verbose=args.verbose)


def chat(args: argparse.Namespace) -> int:
    """``tunekit chat``: one prompt with ``-p``, else a conversation read line by line from stdin."""
    from ..result import load

    model = load(args.model, revision=args.revision)
    gen = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    if args.prompt is not None:
        for piece in model.chat(args.prompt, system=args.system, stream=True, **gen):
            print(piece, end="", flush=True)
        print()
        return 0
    interactive = sys.stdin.isatty()
    start = [{"role": "system", "content": args.system}] if args.system else []
    history = list(start)
    if interactive:
        print(f"chatting with {args.model} — empty line or Ctrl-D to quit, /reset to forget the conversation")
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            return 0
        text = line.strip()
        if text == "/reset":
            history = list(start)
            continue
        history.append({"role": "user", "content": text})
        reply = []
        for piece in model.chat(history, stream=True, **gen):
            reply.append(piece)
            print(piece, end="", flush=True)
        print(flush=True)
        history.append({"role": "assistant", "content": "".join(reply).strip()})


def preview(args: argparse.Namespace) -> int:
    """``tunekit preview``: rows rendered with the chat template, trained spans marked."""
    from ..train import preview as render

    color = sys.stdout.isatty() and not args.no_color
    print(render(args.data, base=args.base, template=args.template, n=args.n, train_on=args.train_on, color=color))
    return 0


def templates(args: argparse.Namespace) -> int:
    """``tunekit templates``: the shipped chat templates, their eos and checksum."""
    from ..templates import get_template, list_templates

    for name in list_templates():
        tpl = get_template(name)
        print(f"{name:10s} eos={tpl.eos!r:16s} sha256={tpl.sha256[:12]}")
    return 0


def register(sub) -> None:
    """Add ``train``, ``chat``, ``preview`` and ``templates`` to the top-level subparsers."""
    cmd = sub.add_parser("train", help="fine-tune a model on a data file",
                         description="Fine-tune a chat model. Every flag mirrors a tunekit.finetune() option.")
    cmd.add_argument("data", nargs="?", help="training data: file, folder, Hub dataset id")
    add_config_flags(cmd)
    cmd.add_argument("--dry-run", action="store_true",
                     help="print the training plan and memory estimate (tunekit.train.plan()) without "
                          "loading weights or writing anything")
    add_option_flags(cmd)
    cmd.add_argument("--nproc", type=int, default=1, metavar="N",
                     help="train data-parallel in N processes (GPUs, or CPU processes with gloo) via accelerate")
    cmd.add_argument("--accelerate-config", metavar="YAML",
                     help="accelerate config for --nproc, e.g. examples/accelerate/fsdp.yaml or "
                          "deepspeed_zero3.yaml (default: plain data parallelism)")
    cmd.set_defaults(func=train)

    cmd = sub.add_parser("chat", help="chat with a fine-tuned model (output folder or Hub id)")
    cmd.add_argument("model", help="output folder or Hub repo id")
    cmd.add_argument("-p", "--prompt", help="answer this one prompt and exit")
    cmd.add_argument("--system", help="system message")
    cmd.add_argument("--revision", help="Hub revision")
    cmd.add_argument("--max-new-tokens", type=int, default=256)
    cmd.add_argument("--temperature", type=float, default=0.0)
    cmd.add_argument("--top-p", type=float, default=1.0)
    cmd.set_defaults(func=chat)

    cmd = sub.add_parser("preview", help="show rows rendered with the chat template, trained spans marked")
    cmd.add_argument("data")
    cmd.add_argument("--base", help="base model (default: the embedded SmolLM2-135M-Instruct)")
    cmd.add_argument("--template", help="chat template name, .jinja file or Jinja text")
    cmd.add_argument("-n", type=int, default=3, help="rows to show")
    cmd.add_argument("--train-on", choices=("assistant", "all"), default="assistant")
    cmd.add_argument("--no-color", action="store_true", help="mark trained spans with ⟦ ⟧ instead of colour")
    cmd.set_defaults(func=preview)

    cmd = sub.add_parser("templates", help="list the shipped chat templates")
    cmd.set_defaults(func=templates)
