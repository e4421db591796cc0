"""Stopping cleanly when the machine is taken away: SIGTERM (what schedulers and spot instances send before they
kill) or SIGINT (Ctrl-C).

During train() with save_on_preemption=True (the default), the first such signal only sets a flag. At the end of
the optimizer step in progress (after its logging, evaluation and save), the Trainer checks the flag; under torchrun
the ranks all-reduce it, so every rank stops after the same step even when only one got the signal. It then writes
a checkpoint (unless that step was just saved), prints one line saying where it is and how to resume, and raises
`Preempted` (a SystemExit: exit status 128 + the signal's number, as a shell reports a process killed by it).
A second signal acts as it would without the Trainer (SIGINT raises KeyboardInterrupt; SIGTERM terminates). The
previous handlers come back when train() ends."""
from __future__ import annotations

import os
import signal
import sys
import threading

import torch

from .callbacks import TrainerCallback

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(SystemExit):
    """Training stopped by a signal after a checkpoint was written; `checkpoint` is its folder."""

    def __init__(self, signum: int, checkpoint: str, message: str):
        super().__init__(128 + signum)
        self.signum, self.checkpoint, self.message = signum, checkpoint, message

    def __str__(self) -> str:
        return self.message


class PreemptionGuard(TrainerCallback):
    """The signal handlers for one train() call (a context manager), and the step-end check. It is one of the
    trainer's callbacks meanwhile, to see which step was last saved."""

    def __init__(self, trainer):
        self.handler = trainer.callback_handler
        # Python runs signal handlers in the main thread only; train() in another thread keeps the defaults.
        self.enabled = (trainer.args.save_on_preemption
                        and threading.current_thread() is threading.main_thread())
        self.signum = 0
        self.previous: dict[int, object] = {}
        self.saved_step: int | None = None

    def __enter__(self) -> PreemptionGuard:
        if self.enabled:
            for sig in SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        self.handler.add_callback(self)
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.handler.remove_callback(self)
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()
        if self.signum and kind is None:  # it came during the last step's events and training ended: not swallowed
            os.kill(os.getpid(), self.signum)

    def _handle(self, signum, frame) -> None:
        if self.signum:  # the second one: what it would have done without us
            previous = self.previous.get(signum, signal.SIG_DFL)
            signal.signal(signum, previous)
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), signum)
            return
        self.signum = signum
        # os.write: a handler may interrupt a print in progress, whose buffer is not reentrant.
        os.write(2, f"tuneforge: {signal.Signals(signum).name} received: finishing the current step, then saving a "
                    "checkpoint (send it again to stop at once)\n".encode())

    def on_save(self, args, state, control, **kwargs):
        self.saved_step = state.global_step

    def requested(self, dist) -> int:
        """The signal to stop for (0: none), the same on every rank: the ranks' flags are all-reduced."""
        if not (dist.active and self.enabled):  # every rank has the same arguments: all skip the all-reduce
            return self.signum
        flag = torch.tensor(self.signum, dtype=torch.int64, device=dist.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag)

    def stop(self, trainer, signum: int):
        """Save (unless this step just was) and raise Preempted on every rank."""
        state, args = trainer.state, trainer.args
        if self.saved_step != state.global_step:
            trainer._save_checkpoint(False)
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        message = (f"training stopped by {signal.Signals(signum).name} after step {state.global_step} of "
                   f"{state.max_steps}; checkpoint saved in {folder}. To resume, run the same script with "
                   f"trainer.train(resume_from_checkpoint=True) (CLI: add --resume)")
        if trainer.dist.is_main:
            print(message, file=sys.stderr, flush=True)
        self.signum = 0  # acted upon
        raise Preempted(signum, folder, message)
