"""A progress bar for training: updates, loss, eval loss and ETA on one line."""

from __future__ import annotations

from transformers import TrainerCallback


# The logged values the bar shows, and their labels: the losses, and for DPO/KTO (TRL's names)
# how often the chosen reply out-scores the rejected one and by how much, on the eval split.
LOGGED = (("loss", "loss"), ("eval_loss", "eval"), ("eval_rewards/accuracies", "reward acc"),
          ("eval_rewards/margins", "margin"))


class ProgressBar(TrainerCallback):
    """Replaces the Trainer's own bar (disabled with ``disable_tqdm``) so the latest train and
    eval losses (DPO/KTO: reward accuracy and margin too) stay visible instead of scrolling past
    as dict dumps."""

    def __init__(self):
        self.bar = None
        self.postfix: dict[str, str] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", unit="step",
                            dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        for key, label in LOGGED:
            if key in logs:
                self.postfix[label] = f"{logs[key]:.3f}"
        self.bar.set_postfix(self.postfix, refresh=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
