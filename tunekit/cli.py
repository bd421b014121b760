"""The ``tunekit`` command line: a thin layer that parses arguments, calls the Python API and
turns ``TunekitError`` into one line on stderr and exit code 1 (traceback with TUNEKIT_DEBUG=1).

``tunekit train`` flags are generated from :class:`tunekit.options.Options`, so the CLI and
``tunekit.finetune`` share names, defaults and help text.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path

from . import config
from .errors import ConfigError, TunekitError


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _number(text: str) -> float | int:
    """eval_split and friends accept a fraction or a count."""
    return int(text) if text.isdigit() else float(text)


def _arg_type(annotation: str):
    base = annotation.replace(" | None", "")
    return {"int": int, "float": float, "bool": _bool, "str": str}.get(base, str)


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per field of Options (underscores become dashes), default ``None`` so only
    what the user typed is passed on and the Python defaults stay the single source."""
    from .options import option_fields

    for f in option_fields():
        if not f.metadata.get("cli", True):
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _arg_type(str(f.type))
        if f.name == "eval_split":
            kind = _number
        kwargs: dict = {"dest": f.name, "default": None, "help": f"{f.metadata['help']} (default: {f.default})"}
        if kind is _bool:
            kwargs.update(nargs="?", const=True, type=_bool, metavar="BOOL")
        else:
            kwargs.update(type=kind)
            if f.metadata.get("choices"):
                kwargs["choices"] = list(f.metadata["choices"])
        parser.add_argument(flag, **kwargs)


def _options_from(args: argparse.Namespace) -> dict:
    from .options import option_fields

    options: dict = {}
    if getattr(args, "config", None):
        options.update(_read_config(args.config))
    for f in option_fields():
        value = getattr(args, f.name, None)
        if value is not None:
            options[f.name] = value
    for item in getattr(args, "training_arg", None) or []:
        key, _, raw = item.partition("=")
        if not key or not _:
            raise ConfigError(f"--training-arg takes KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        options.setdefault("training_args", {})[key] = value
    return options


def _read_config(path: str) -> dict:
    import yaml

    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"config file {path} does not exist") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    return loaded


# -- commands ------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from .train import finetune

    options = _options_from(args)
    data = args.data or options.pop("data", None)
    if data is None:
        raise ConfigError("give the training data: `tunekit train DATA` or `data:` in --config")
    options.pop("data", None)
    from .cli_serve import maybe_launch

    launched = maybe_launch(args, data, options)
    if launched is not None:
        return launched
    result = finetune(data, **options)
    m = result.metrics
    print(f"saved {result.method} fine-tune of {result.base} to {result.output_dir}")
    if result.run.get("method_choice"):
        print(f"  method='auto' chose {result.run['method_choice']['reason']}")
    print(f"  eval loss {m.get('eval_loss_first')} -> {m.get('eval_loss_best')}  |  "
          f"{m.get('steps')} steps in {m.get('wall_seconds')} s, {m.get('tokens_per_second')} tokens/s")
    if result.url:
        print(f"  pushed to {result.url}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from .result import load

    model = load(args.model, revision=args.revision)
    gen = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    if args.prompt is not None:
        for piece in model.chat(args.prompt, system=args.system, stream=True, **gen):
            print(piece, end="", flush=True)
        print()
        return 0
    interactive = sys.stdin.isatty()
    history: list[dict[str, str]] = []
    if args.system:
        history.append({"role": "system", "content": args.system})
    if interactive:
        print(f"chatting with {args.model} — empty line or Ctrl-D to quit, /reset to forget the conversation")
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or not line.strip():
            return 0
        text = line.strip()
        if text == "/reset":
            history = history[:1] if args.system else []
            continue
        history.append({"role": "user", "content": text})
        reply = []
        for piece in model.chat(history, stream=True, **gen):
            reply.append(piece)
            print(piece, end="", flush=True)
        print(flush=True)
        history.append({"role": "assistant", "content": "".join(reply).strip()})


def cmd_preview(args: argparse.Namespace) -> int:
    from .train import preview

    color = sys.stdout.isatty() and not args.no_color
    print(preview(args.data, base=args.base, template=args.template, n=args.n, train_on=args.train_on, color=color))
    return 0


def cmd_templates(args: argparse.Namespace) -> int:
    from .templates import get_template, list_templates

    for name in list_templates():
        tpl = get_template(name)
        print(f"{name:10s} eos={tpl.eos!r:16s} sha256={tpl.sha256[:12]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunekit", description="Fine-tune open chat models (full, LoRA, QLoRA) and publish them on the Hub."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = sub.add_parser("train", help="fine-tune a model on a data file",
                           description="Fine-tune a chat model. Every flag mirrors a tunekit.finetune() option.")
    train.add_argument("data", nargs="?", help="training data: file, folder, Hub dataset id")
    train.add_argument("--config", help="YAML file of options (and `data:`); flags override it")
    train.add_argument("--training-arg", action="append", metavar="KEY=VALUE",
                       help="extra trl.SFTConfig argument (JSON value), repeatable")
    add_option_flags(train)
    from . import cli_serve

    cli_serve.add_train_flags(train)
    train.set_defaults(func=cmd_train)

    chat = sub.add_parser("chat", help="chat with a fine-tuned model (output folder or Hub id)")
    chat.add_argument("model", help="output folder or Hub repo id")
    chat.add_argument("-p", "--prompt", help="answer this one prompt and exit")
    chat.add_argument("--system", help="system message")
    chat.add_argument("--revision", help="Hub revision")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.0)
    chat.add_argument("--top-p", type=float, default=1.0)
    chat.set_defaults(func=cmd_chat)

    prev = sub.add_parser("preview", help="show rows rendered with the chat template, trained spans marked")
    prev.add_argument("data")
    prev.add_argument("--base", help="base model (default: the embedded SmolLM2-135M-Instruct)")
    prev.add_argument("--template", help="chat template name, .jinja file or Jinja text")
    prev.add_argument("-n", type=int, default=3, help="rows to show")
    prev.add_argument("--train-on", choices=("assistant", "all"), default="assistant")
    prev.add_argument("--no-color", action="store_true", help="mark trained spans with ⟦ ⟧ instead of colour")
    prev.set_defaults(func=cmd_preview)

    tpl = sub.add_parser("templates", help="list the shipped chat templates")
    tpl.set_defaults(func=cmd_templates)

    # The Hub server owns its commands; importing its CLI module stays light.
    from . import model_cli, space_cli
    from .hubserver import cli as hub_cli

    hub_cli.register(sub)
    space_cli.register(sub)
    cli_serve.register(sub)
    model_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except TunekitError as e:
        if config.debug():
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
