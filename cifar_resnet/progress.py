"""What a user sees inside an epoch: on a terminal a tqdm bar per epoch whose postfix carries
the running loss, accuracy, learning rate, images/s and the whole run's ETA, from the first step
and refreshed whenever tqdm redraws (its ``mininterval``), short enough for 80 columns; in a log
file (stdout not a terminal) a plain line with the same figures every ``log_every`` steps, or
every ``LOG_SECONDS`` when steps are slow, and no carriage returns.

The figures are read from the device only at those moments (a read waits for a GPU). The log's
moments also make the rows of RUN/steps.csv and, with --tensorboard, per-step scalars.
Under a time budget the plan can change mid-epoch: the bar's total follows it (``total_steps``
may be a function), read at every step: the loop is not paused to re-plan.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

LOG_SECONDS = 30.0  # a log line at least this often when steps are slow
LOG_SHARE = 0.1  # by default a log line every 10% of an epoch
TIMED_STEPS, TIMED_SECONDS = 20, 30.0  # the expected length is said after these (or 3 steps)


def format_seconds(seconds: float) -> str:
    """``42s``, ``7m05s``, ``3h12m``."""
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def plural(n: int, word: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class Progress:
    """Progress of one process's training: ``start_epoch``, ``step`` after every step,
    ``close`` at the end of an epoch.
    ``rows`` collects the logged figures; ``total_steps`` is the run's steps, or a function
    giving the current plan's; ``announce``: say the run's expected length once its first
    steps are timed (a time budget's run has said its plan instead)."""

    def __init__(
        self,
        *,
        total_steps: int | Callable[[], int],
        steps_per_epoch: int,
        first_step: int,
        tty: bool,
        log: Callable[[str], None] | None,
        log_every: int = 0,
        writer: Any = None,
        rows: list[dict[str, Any]] | None = None,
        announce: bool = True,
    ):
        self._total = total_steps if callable(total_steps) else (lambda: total_steps)
        self.steps_per_epoch = steps_per_epoch
        self.tty, self.log, self.writer = tty, log, writer
        self.every = log_every or max(1, round(LOG_SHARE * steps_per_epoch))
        self.rows = rows if rows is not None else []
        self.started, self.first_step = time.perf_counter(), first_step
        self.bar: tqdm | None = None
        self.epoch = -1
        self.last_log = self.started
        self.announced = not announce  # the run's expected length, said once
        self.first_done = self.started

    @property
    def total_steps(self) -> int:
        return self._total()

    @property
    def epochs(self) -> int:
        return -(-self.total_steps // self.steps_per_epoch)

    def _epoch_total(self) -> int:
        """The steps of this epoch under the current plan."""
        left = self.total_steps - self.epoch * self.steps_per_epoch
        return max(1, min(self.steps_per_epoch, left))

    def start_epoch(self, epoch: int, epoch_step: int, images: int = 0) -> None:
        """``epoch`` is 0-based; ``epoch_step`` where a resumed epoch goes on, and ``images``
        the epoch's images trained before it: the speed counts only those after."""
        self.close()
        self.epoch, self.epoch_start = epoch, time.perf_counter()
        self.epoch_first, self.epoch_images = epoch_step, images
        if self.tty:
            self.bar = tqdm(
                total=self._epoch_total(),
                initial=epoch_step,
                leave=False,
                unit="step",
                dynamic_ncols=True,
                desc=f"ep {epoch + 1}/{self.epochs}",
                bar_format=BAR_FORMAT,
            )

    def step(
        self, step: int, epoch_step: int, lr: float, read: Callable[[], tuple[float, float, int]]
    ) -> None:
        """After global step ``step`` (1-based count); ``read()`` gives the epoch's running
        (loss, accuracy %, images) and is called only when a line, a row or a redraw is due."""
        now = time.perf_counter()
        due = epoch_step % self.every == 0 or now - self.last_log >= LOG_SECONDS
        due = due and epoch_step != self.steps_per_epoch  # the epoch line follows anyway
        redraw = self.bar is not None and self._redraw_due()
        if due or redraw:
            loss, acc, images = read()
            images -= self.epoch_images
            speed = images / max(now - self.epoch_start, 1e-9) if images > 0 else 0.0
            eta = (now - self.started) / max(step - self.first_step, 1) * (self.total_steps - step)
            figures = (loss, acc, lr, speed, eta)
            if due:
                self.last_log = now
                self._record(step, epoch_step, figures)
            if redraw:
                self.bar.set_postfix_str(short_figures(*figures), refresh=False)
        self._announce(step, now)
        if self.bar is not None:
            total = self._epoch_total()
            if total != self.bar.total:  # re-planned
                self.bar.total = total
                self.bar.set_description_str(f"ep {self.epoch + 1}/{self.epochs}", False)
            self.bar.update(1)

    def _announce(self, step: int, now: float) -> None:
        """Once the first steps are timed (``TIMED_STEPS``, or ``TIMED_SECONDS``): the run's
        expected length, a line above the bar or in the log."""
        done = step - self.first_step
        if done == 1:  # the first step holds warm-up: the speed is timed from its end
            self.first_done = now
        timed = done - 1
        if (
            self.announced
            or timed < 2
            or (timed < TIMED_STEPS and now - self.first_done < TIMED_SECONDS)
        ):
            return
        self.announced = True
        per_step = (now - self.first_done) / timed
        left = self.total_steps - step
        message = (
            f"expected length: about {format_seconds(per_step * left)} of training for the "
            f"{left} steps left ({per_step * 1e3:.0f} ms/step over {timed} steps; "
            "evaluations not counted)"
        )
        if self.bar is not None and self.log is not None:
            self.write(message, self.log)
        elif self.log is not None:
            self.log(message)

    def _redraw_due(self) -> bool:
        """Whether tqdm will redraw at this step: the first, then every ``mininterval``."""
        bar = self.bar
        return bar.n == bar.initial or time.time() - bar.last_print_t >= bar.mininterval

    def _record(self, step: int, epoch_step: int, figures: tuple) -> None:
        loss, acc, lr, speed, eta = figures
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
        if self.bar is None and self.log is not None:
            self.log(
                f"epoch {self.epoch + 1}/{self.epochs} step {epoch_step}/{self.steps_per_epoch}"
                f" | loss {loss:.4f} acc {acc:.2f}% | lr {lr:.4g} | {speed:.0f} img/s"
                f" | run ETA {format_seconds(eta)}"
            )

    def write(self, message: str, log: Callable[[str], None]) -> None:
        """``log(message)`` with the bar cleared first and drawn again after."""
        with tqdm.external_write_mode(file=sys.stdout):
            log(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Phases:
    """A long wait of a few named parts (a report's plots, a time budget's probe): on a
    terminal a bar naming the part under way, with the parts done and the time elapsed;
    elsewhere nothing (the caller's line says what started). Call it with each part's name."""

    def __init__(self, desc: str, tty: bool):
        self.bar = None
        if tty:
            fmt = "{desc}: {n_fmt} done, {elapsed}{postfix}"  # tqdm puts ", " before a postfix
            self.bar = tqdm(desc=desc, leave=False, unit="part", bar_format=fmt, file=sys.stdout)

    def __call__(self, part: str) -> None:
        if self.bar is not None:
            if self.bar.postfix:
                self.bar.update(1)
            self.bar.set_postfix_str(part)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Phases:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# The epoch's steps and own elapsed time, then the run's figures, speed and ETA first; what is
# left of the terminal's width is the bar (at 80 columns, at least 2 with 5-digit figures).
BAR_FORMAT = "{desc}|{bar}| {n_fmt}/{total_fmt} {elapsed}{postfix}"


def short_figures(loss: float, acc: float, lr: float, speed: float, eta: float) -> str:
    """The bar's postfix: ``471im/s ETA 33h10m loss 2.01 acc 24.9% lr 0.1``."""
    return f"{speed:.0f}im/s ETA {format_seconds(eta)} loss {loss:.3g} acc {acc:.1f}% lr {lr:.2g}"
