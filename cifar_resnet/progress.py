"""What a user sees inside an epoch: on a terminal a tqdm bar per epoch whose postfix carries
the running loss, accuracy, learning rate, images/s and the whole run's ETA; in a log file
(stdout not a terminal) a plain line with the same figures every ``log_every`` steps, or every
``LOG_SECONDS`` when steps are slow, and no carriage returns.

The figures are read from the device only at those moments (a read waits for a GPU), and each
one becomes a row of RUN/steps.csv and, with --tensorboard, per-step scalars.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

LOG_SECONDS = 30.0  # a log line at least this often when steps are slow
LOG_SHARE = 0.1  # by default a log line every 10% of an epoch


def format_seconds(seconds: float) -> str:
    """``42s``, ``7m05s``, ``3h12m``."""
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Progress of one process's training: ``start_epoch``, ``step`` after every step,
    ``close`` at the end of an epoch. ``rows`` collects the logged figures."""

    def __init__(
        self,
        *,
        total_steps: int,
        steps_per_epoch: int,
        first_step: int,
        tty: bool,
        log: Callable[[str], None] | None,
        log_every: int = 0,
        writer: Any = None,
        rows: list[dict[str, Any]] | None = None,
    ):
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.epochs = -(-total_steps // steps_per_epoch)
        self.tty, self.log, self.writer = tty, log, writer
        self.every = log_every or max(1, round(LOG_SHARE * steps_per_epoch))
        self.rows = rows if rows is not None else []
        self.started, self.first_step = time.perf_counter(), first_step
        self.bar: tqdm | None = None
        self.last_log = self.started

    def start_epoch(self, epoch: int, epoch_step: int, images: int = 0) -> None:
        """``epoch`` is 0-based; ``epoch_step`` where a resumed (or paused) epoch goes on, and
        ``images`` the epoch's images trained before it: the speed counts only those after."""
        self.epoch, self.epoch_start = epoch, time.perf_counter()
        self.epoch_first, self.epoch_images = epoch_step, images
        if self.tty:
            self.bar = tqdm(
                total=self.steps_per_epoch,
                initial=epoch_step,
                leave=False,
                unit="step",
                dynamic_ncols=True,
                desc=f"epoch {epoch + 1}/{self.epochs}",
            )

    def step(
        self, step: int, epoch_step: int, lr: float, read: Callable[[], tuple[float, float, int]]
    ) -> None:
        """After global step ``step`` (1-based count); ``read()`` gives the epoch's running
        (loss, accuracy %, images) and is called only when a line or postfix is due."""
        if self.bar is not None:
            self.bar.update(1)
        now = time.perf_counter()
        due = epoch_step % self.every == 0 or now - self.last_log >= LOG_SECONDS
        if not due or epoch_step == self.steps_per_epoch:  # the epoch line follows anyway
            return
        self.last_log = now
        loss, acc, images = read()
        images -= self.epoch_images
        speed = images / max(now - self.epoch_start, 1e-9) if images > 0 else 0.0
        done = step - self.first_step
        eta = (now - self.started) / max(done, 1) * (self.total_steps - step)
        row = {
            "step": step,
            "epoch": self.epoch + 1,
            "lr": lr,
            "loss": loss,
            "acc": acc,
            "images_per_s": speed,
        }
        self.rows.append(row)
        if self.writer is not None:
            self.writer.add_scalar("step/loss", loss, step)
            self.writer.add_scalar("step/lr", lr, step)
        if self.bar is not None:
            self.bar.set_postfix_str(
                f"loss {loss:.4f} acc {acc:.2f}% lr {lr:.4g} {speed:.0f} img/s "
                f"run ETA {format_seconds(eta)}",
                refresh=False,
            )
        elif self.log is not None:
            self.log(
                f"epoch {self.epoch + 1}/{self.epochs} step {epoch_step}/{self.steps_per_epoch}"
                f" | loss {loss:.4f} acc {acc:.2f}% | lr {lr:.4g} | {speed:.0f} img/s"
                f" | run ETA {format_seconds(eta)}"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
