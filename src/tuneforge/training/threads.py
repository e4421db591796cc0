"""How many threads torch computes with during training: as many as there are CPUs this process can actually get.

Why it matters (bench/NOTES.md, "Contention"): a training step is thousands of operations, and every one above
torch's grain size forks an OpenMP region whose threads meet at a barrier. When a thread's CPU is taken by another
job, the others wait at the barrier until the scheduler gives it back (milliseconds, against microseconds of work),
so a step of two threads on two cores with one competing process took 3-5x as long, while one thread lost a fifth.
torch picks its count from the CPU affinity mask alone: it ignores cgroup CPU quotas (a container limited to 2 CPUs
on a 64-core host gets 64 threads) and other jobs on the same CPUs.

So the Trainer sets the count itself, in one place (`ThreadBudget`, a callback for the length of train()):
- allowed CPUs: the affinity mask (`os.sched_getaffinity`), capped by the cgroup quota (v2 cpu.max, v1
  cpu.cfs_quota_us), shared by the processes of this machine under torchrun (LOCAL_WORLD_SIZE);
- at train begin: that many threads; at a step end 0.5 s later, then every 3 s: the allowed CPUs minus what other
  processes used of them since the last look (/proc/stat against this process's own CPU time), at least 1;
- the count torch had before comes back when training ends; evaluate() and predict() outside training do the same.

Overrides: OMP_NUM_THREADS (what torchrun sets) or a torch.set_num_threads() call made before training are kept as
they are; otherwise TUNEFORGE_NUM_THREADS=N fixes N threads. A thread count changes float rounding, so fix it for
runs that must be bit-identical under any load (e.g. an interrupted and a resumed run, or two runs compared);
TUNEFORGE_NUM_THREADS=auto is the default."""
from __future__ import annotations

import functools
import logging
import math
import os
import time
from pathlib import Path

import torch

from ..errors import InputError
from .callbacks import TrainerCallback

logger = logging.getLogger("tuneforge")

ENV = "TUNEFORGE_NUM_THREADS"
CHECK_EVERY_S = 3.0  # long enough for /proc/stat's 10 ms ticks to average out, short against a training run
FIRST_CHECK_S = 0.5  # the first look comes sooner: a job already running when training starts is seen at once
_TORCH_DEFAULT = torch.get_num_threads()  # before user code could change it: a different count later is a choice


def cgroup_cpu_quota(root: str | Path = "/sys/fs/cgroup",
                     self_cgroup: str | Path = "/proc/self/cgroup") -> float | None:
    """CPUs' worth of time per period the cgroup may use (cgroup v2 cpu.max or v1 cpu.cfs_quota_us); None: no limit."""
    root = Path(root)
    try:
        lines = Path(self_cgroup).read_text().splitlines()
    except OSError:
        lines = []
    paths = {}
    for line in lines:  # "0::/path" (v2) or "4:cpu,cpuacct:/path" (v1)
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") or [""]:
                paths[controller] = parts[2].lstrip("/")
    candidates = []
    if "" in paths:  # v2: the quota may be set on any ancestor; the tightest counts
        rel = Path(paths[""])
        for folder in [root / rel, *[root / p for p in rel.parents]]:
            candidates.append(("v2", folder / "cpu.max"))
    for name in ("cpu", "cpu,cpuacct"):
        if "cpu" in paths:
            candidates.append(("v1", root / name / paths["cpu"] / "cpu.cfs_quota_us"))
            candidates.append(("v1", root / name / "cpu.cfs_quota_us"))
    quotas = []
    for kind, path in candidates:
        try:
            if kind == "v2":
                quota, period = path.read_text().split()[:2]
                if quota != "max":
                    quotas.append(int(quota) / int(period))
            else:
                quota = int(path.read_text())
                if quota > 0:
                    quotas.append(quota / int(path.with_name("cpu.cfs_period_us").read_text()))
        except (OSError, ValueError):
            continue
    return min(quotas) if quotas else None


def allowed_cpus(local_world_size: int = 1) -> int:
    """CPUs this process may use: the affinity mask, capped by the cgroup quota, shared among this machine's ranks;
    never more than torch's own default (which also leaves out hyperthread siblings)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cpus = min(cpus, _TORCH_DEFAULT)
    quota = cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus // max(1, local_world_size))


class CpuMeter:
    """CPU time that other processes took on our CPUs, from /proc/stat (per-CPU ticks, steal included: a hypervisor's
    other guests are other jobs too) minus this process's own CPU time, over the interval since the last reading."""

    def __init__(self, stat: str | Path = "/proc/stat"):
        self.stat = Path(stat)
        self.cpus = {f"cpu{c}" for c in os.sched_getaffinity(0)} if hasattr(os, "sched_getaffinity") else None
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.last = self._read()

    def _read(self) -> tuple[float, float, float] | None:
        try:
            lines = self.stat.read_text().splitlines()
        except OSError:
            return None
        busy = 0
        for line in lines:
            fields = line.split()
            if not fields or not fields[0].startswith("cpu") or fields[0] == "cpu":
                continue
            if self.cpus is not None and fields[0] not in self.cpus:
                continue
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
            busy += user + nice + system + irq + softirq + steal
        return time.monotonic(), busy / self.tick, time.process_time()

    def others(self) -> float | None:
        """CPUs' worth of other processes' work since the last call (None when /proc/stat cannot be read)."""
        now = self._read()
        last, self.last = self.last, now
        if now is None or last is None or now[0] - last[0] <= 0:
            return None
        busy, own = now[1] - last[1], now[2] - last[2]
        return max(0.0, busy - own) / (now[0] - last[0])


def threads_for(allowed: int, others: float | None) -> int:
    """Threads that each get a CPU: a CPU counts as taken when others use more than 0.8 of it on average, since
    a thread whose CPU is shared stalls every barrier the others reach."""
    if others is None:
        return allowed
    return max(1, min(allowed, math.floor(allowed - others + 0.2)))


class ThreadBudget(TrainerCallback):
    """The thread count during train(), set at train begin and kept to the CPUs free of other work (module doc)."""

    def __init__(self, trainer=None, local_world_size: int | None = None):
        self.handler = trainer.callback_handler if trainer is not None else None
        self.local_world_size = local_world_size or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        self.previous: int | None = None
        self.meter: CpuMeter | None = None
        self.next_check = 0.0

    active = 0  # budgets in force (an evaluation during training uses the training's)

    def __enter__(self) -> ThreadBudget:
        """One of the trainer's callbacks for the train() call; the previous count comes back however it ends."""
        if self.handler is not None:
            self.handler.add_callback(self)
        ThreadBudget.active += 1
        return self

    def __exit__(self, *exc) -> None:
        ThreadBudget.active -= 1
        if self.handler is not None:
            self.handler.remove_callback(self)
        self.restore()

    def fixed(self) -> int | None:
        """The count the user chose, if any (None: auto). torch's own settings (OMP_NUM_THREADS, read when torch
        started, or a torch.set_num_threads() call) come first; then TUNEFORGE_NUM_THREADS."""
        value = os.environ.get(ENV, "auto").strip().lower()
        if value not in ("", "auto") and (not value.isdigit() or int(value) < 1):
            raise InputError(f"{ENV}={value!r}: use a positive number of threads or 'auto'")
        if os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads() != _TORCH_DEFAULT:
            return torch.get_num_threads()
        return None if value in ("", "auto") else int(value)

    def begin(self) -> None:
        self.previous = torch.get_num_threads()
        fixed = self.fixed()
        self.allowed = fixed or allowed_cpus(self.local_world_size)
        self._set(self.allowed)
        self.meter = None if fixed else CpuMeter()
        self.next_check = time.monotonic() + FIRST_CHECK_S

    def adapt(self) -> None:
        if self.meter is None or time.monotonic() < self.next_check:
            return
        self.next_check = time.monotonic() + CHECK_EVERY_S
        self._set(threads_for(self.allowed, self.meter.others()))

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin()

    def on_step_end(self, args, state, control, **kwargs):
        self.adapt()

    def on_prediction_step(self, args, state, control, **kwargs):
        self.adapt()

    def on_train_end(self, args, state, control, **kwargs):
        self.restore()

    def restore(self) -> None:
        if self.previous is not None:
            torch.set_num_threads(self.previous)
            self.previous, self.meter = None, None

    def _set(self, n: int) -> None:
        if n != torch.get_num_threads():
            logger.info(f"training on {n} thread(s) ({self.allowed} CPU(s) allowed; other processes use the rest); "
                        f"{ENV}=N fixes the count")
            torch.set_num_threads(n)


def fit_threads(method):
    """A Trainer method (evaluation, prediction) run under a ThreadBudget of its own, unless one is in force."""
    @functools.wraps(method)
    def run(trainer, *args, **kwargs):
        if ThreadBudget.active:
            return method(trainer, *args, **kwargs)
        with ThreadBudget(trainer) as budget:
            budget.begin()
            return method(trainer, *args, **kwargs)
    return run
