"""A busy or failing machine: preemption by SIGTERM (real subprocesses, real signals, torchrun too), full and
read-only disks during a checkpoint and the final save (a real small tmpfs), damaged checkpoints, thread counts."""
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tuneforge import Trainer, TrainerCallback, TrainingArguments
from tuneforge.training import checkpoint, threads
from tuneforge.training.checkpoint import CheckpointWriteError
from tuneforge.training.preemption import Preempted
from tuneforge.checkpoint_io import CheckpointError
from trainer_child import make_data, make_model

HERE = Path(__file__).parent


class Runs:
    """Training runs of trainer_child.py, each in its own process forked from one server (the imports once)."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(HERE / "trainer_child.py"), "serve"], cwd=HERE, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)})

    def start(self, output_dir, mode):
        self.proc.stdin.write(f"{output_dir} {mode} 0\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def wait(self, output_dir):
        return int(self.proc.stdout.readline()), Path(f"{output_dir}.stderr").read_text()

    def run(self, output_dir, mode):
        self.start(output_dir, mode)
        return self.wait(output_dir)

    def signal_at(self, output_dir, step, delay):
        """Start a run, wait until it begins step `step`, wait `delay` s more, SIGTERM it."""
        pid = self.start(output_dir, "report_progress")
        progress, deadline = Path(f"{output_dir}.progress-0"), time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                seen = int(progress.read_text().split()[1])
            except (OSError, ValueError, IndexError):
                seen = -1
            if seen >= step:
                time.sleep(delay)
                os.kill(pid, signal.SIGTERM)
                break
            time.sleep(0.002)
        return self.wait(output_dir)


@pytest.fixture(scope="module")
def runs():
    server = Runs()
    yield server
    server.proc.stdin.close()
    server.proc.wait(timeout=60)


def final_weights(folder):
    return load_file(folder / "result" / "model.safetensors")


def losses(folder):
    history = json.loads((folder / "result" / "log_history.json").read_text())
    return {e["step"]: e["loss"] for e in history if "loss" in e}


def assert_same_run(expected, got, after_step):
    a, b = losses(expected), losses(got)
    assert set(a) == set(b) == set(range(1, 13))
    assert all(a[s] == b[s] for s in range(after_step + 1, 13)), (a, b)
    wa, wb = final_weights(expected), final_weights(got)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def newest_checkpoint(folder):
    found = checkpoint.sorted_checkpoints(folder)
    return int(found[-1].name.split("-")[1]) if found else None


# ------------------------------------------------------------------------------------------ preemption


@pytest.fixture(scope="module")
def uninterrupted(runs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    code, err = runs.run(folder, "full")
    assert code == 0, err[-3000:]
    return folder


def test_sigterm_at_five_random_points_then_resume_is_bit_identical(runs, uninterrupted, tmp_path):
    """Dropout on, shuffling, accumulation 2, saves every 4 steps; SIGTERM lands anywhere in a step (forward,
    backward, a checkpoint being written, logging)."""
    rng = random.Random(21)
    for k in range(5):
        folder = tmp_path / f"run{k}"
        step, delay = rng.randint(1, 10), rng.uniform(0.0, 0.06)
        code, err = runs.signal_at(folder, step, delay)
        assert code == 128 + signal.SIGTERM, err[-3000:]
        stopped = newest_checkpoint(folder)
        assert step <= stopped <= step + 2, (step, stopped)
        line = [x for x in err.splitlines() if x.startswith("training stopped by SIGTERM")]
        assert line and f"checkpoint saved in {folder / f'checkpoint-{stopped}'}" in line[0], err[-3000:]
        assert "resume_from_checkpoint=True" in line[0]
        assert checkpoint.damaged(folder / f"checkpoint-{stopped}") is None
        assert not list(folder.glob(".tmp-*"))
        code, err = runs.run(folder, "resume")
        assert code == 0, err[-3000:]
        assert_same_run(uninterrupted, folder, stopped)


def tiny_trainer(output_dir, callbacks=(), **overrides):
    model, _ = make_model("bert")
    values = dict(output_dir=str(output_dir), per_device_train_batch_size=4, gradient_accumulation_steps=2,
                  max_steps=12, save_steps=4, logging_steps=1, learning_rate=1e-3, seed=7, disable_tqdm=True)
    values.update(overrides)
    return Trainer(model=model, args=TrainingArguments(**values), train_dataset=make_data(), callbacks=list(callbacks))


class SignalAt(TrainerCallback):
    def __init__(self, step, sig=signal.SIGTERM):
        self.step, self.sig, self.handler = step, sig, None

    def on_step_end(self, args, state, control, **kwargs):
        self.handler = signal.getsignal(self.sig)
        if state.global_step == self.step:
            os.kill(os.getpid(), self.sig)


@pytest.fixture
def fixed_threads(monkeypatch):
    monkeypatch.setenv(threads.ENV, "1")


def test_in_process_signal_saves_raises_and_restores_the_handlers(tmp_path, fixed_threads):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted) as stopped:
        tiny_trainer(tmp_path, [SignalAt(3, signal.SIGINT)]).train()
    assert stopped.value.code == 128 + signal.SIGINT
    assert stopped.value.checkpoint == str(tmp_path / "checkpoint-3")
    assert newest_checkpoint(tmp_path) == 3
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    # A signal at a step that is saved anyway writes that checkpoint once.
    with pytest.raises(Preempted):
        tiny_trainer(tmp_path / "b", [SignalAt(4)]).train()
    assert [p.name for p in checkpoint.sorted_checkpoints(tmp_path / "b")] == ["checkpoint-4"]


def test_save_on_preemption_false_leaves_the_signals_alone(tmp_path, fixed_threads):
    seen = SignalAt(-1)
    tiny_trainer(tmp_path, [seen], save_on_preemption=False, max_steps=2).train()
    assert seen.handler == signal.getsignal(signal.SIGTERM)  # not replaced during training
    with pytest.raises(ValueError, match="enable_jit_checkpoint"):
        TrainingArguments(output_dir=str(tmp_path), enable_jit_checkpoint=True, save_on_preemption=False)


# --------------------------------------------------------------------------------------- failing disks


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MB filesystem (tmpfs), mounted for the test; skipped where mounting is not allowed."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if not shutil.which("mount") or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
                                                   capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder, leave=24 * 1024):
    """A ballast file that leaves `leave` bytes free (room for the logs, not for a checkpoint)."""
    ballast = folder / "ballast"
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(0, shutil.disk_usage(folder).free - leave))
    return ballast


class After(TrainerCallback):
    """Runs `action` after the checkpoint of `step` is saved, or (log=True) after its log line is written."""

    def __init__(self, step, action, log=False):
        self.step, self.action, self.log = step, action, log

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step and not self.log:
            self.action()

    def on_log(self, args, state, control, **kwargs):
        if state.global_step == self.step and self.log:
            self.action()


def in_process_reference(tmp_path):
    trainer = tiny_trainer(tmp_path / "reference")
    trainer.train()
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("failure", ["full", "read-only"])
def test_a_checkpoint_that_cannot_be_written(small_disk, tmp_path, fixed_threads, failure):
    out = small_disk / "out"
    ballast = []
    if failure == "full":  # filled once checkpoint-4 is written
        after = After(4, lambda: ballast.append(fill(small_disk)))
    else:  # read-only from the moment step 8 is logged, just before checkpoint-8
        after = After(8, lambda: subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True), log=True)
    with pytest.raises(CheckpointWriteError) as error:
        tiny_trainer(out, [after]).train()
    message = str(error.value)
    assert "\n" not in message
    assert f"could not write {out / 'checkpoint-8'}" in message
    assert ("ENOSPC" if failure == "full" else "EROFS") in message
    assert "needs about 0." in message and "MB free" in message
    assert f"the previous checkpoint {out / 'checkpoint-4'} is intact" in message
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-4", "log.jsonl"]  # nothing partial
    assert checkpoint.damaged(out / "checkpoint-4") is None
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged if "loss" in e] == list(range(1, 9))
    # Space (or write access) back: the resumed run ends where the uninterrupted one does, bit for bit.
    if failure == "full":
        ballast[0].unlink()
    else:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    trainer = tiny_trainer(out)
    trainer.train(resume_from_checkpoint=True)
    expected = in_process_reference(tmp_path)
    assert all(torch.equal(v, expected[k]) for k, v in trainer.model.state_dict().items())


def test_the_final_save_on_a_full_disk(small_disk, tmp_path, fixed_threads):
    trainer = tiny_trainer(tmp_path / "out", save_strategy="no", max_steps=2)
    trainer.train()
    final = small_disk / "final"
    trainer.save_model(str(final))
    before = {p.name: p.read_bytes() for p in final.iterdir()}
    fill(small_disk, leave=8 * 1024)
    with pytest.raises(CheckpointWriteError) as error:
        trainer.save_model(str(final))
    message = str(error.value)
    assert f"could not write {final}: the disk is full (ENOSPC); it needs about" in message
    assert "call save_model() again" in message
    assert {p.name: p.read_bytes() for p in final.iterdir()} == before  # the earlier save is untouched


# ---------------------------------------------------------------------------------- damaged checkpoints


def test_a_truncated_file_in_the_newest_checkpoint(tmp_path, fixed_threads, caplog):
    out = tmp_path / "out"
    tiny_trainer(out).train()
    expected = in_process_reference(tmp_path)
    manifest = json.loads((out / "checkpoint-12" / checkpoint.MANIFEST).read_text())["files"]
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= set(manifest)
    bad = out / "checkpoint-12" / "model.safetensors"
    bad.write_bytes(bad.read_bytes()[:1000])
    # An explicit path stops, naming the file.
    with pytest.raises(CheckpointError, match=f"cannot resume from .*checkpoint-12: {bad} is 1000 bytes"):
        tiny_trainer(out).train(resume_from_checkpoint=str(out / "checkpoint-12"))
    # True falls back to the newest intact one, with a warning, and the run ends as the uninterrupted one.
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        trainer = tiny_trainer(out)
        trainer.train(resume_from_checkpoint=True)
    text = caplog.text
    assert f"checkpoint {out / 'checkpoint-12'} is damaged and is skipped: {bad} is 1000 bytes" in text
    assert f"resuming from {out / 'checkpoint-8'} instead" in text
    assert all(torch.equal(v, expected[k]) for k, v in trainer.model.state_dict().items())
    # A flipped byte (same size) is found by the checksum.
    opt = out / "checkpoint-8" / "optimizer.pt"
    data = bytearray(opt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    opt.write_bytes(bytes(data))
    assert checkpoint.damaged(out / "checkpoint-8") == (f"{opt} does not match the checksum recorded when it was "
                                                        "written (corrupt)")


# -------------------------------------------------------------------------------------------- threads


def test_cgroup_quotas_v1_and_v2(tmp_path):
    (tmp_path / "job" / "step").mkdir(parents=True)
    (tmp_path / "cgroup").write_text("0::/job/step\n")
    assert threads.cgroup_cpu_quota(tmp_path, tmp_path / "cgroup") is None
    (tmp_path / "job" / "step" / "cpu.max").write_text("max 100000\n")
    (tmp_path / "job" / "cpu.max").write_text("250000 100000\n")  # a parent's limit binds too
    assert threads.cgroup_cpu_quota(tmp_path, tmp_path / "cgroup") == 2.5
    v1 = tmp_path / "v1"
    (v1 / "cpu" / "docker" / "abc").mkdir(parents=True)
    (v1 / "self").write_text("4:cpu,cpuacct:/docker/abc\n")
    (v1 / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us").write_text("150000\n")
    (v1 / "cpu" / "docker" / "abc" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_quota(v1, v1 / "self") == 1.5
    (v1 / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_cpu_quota(v1, v1 / "self") is None


def test_threads_leave_the_cpus_other_processes_use():
    assert threads.threads_for(2, 0.05) == 2
    assert threads.threads_for(2, 0.7) == 1  # one competing process on two cores
    assert threads.threads_for(8, 2.0) == 6
    assert threads.threads_for(2, 3.0) == 1
    assert threads.threads_for(4, None) == 4


def test_thread_budget_applies_the_override_and_restores_the_count(monkeypatch):
    start = torch.get_num_threads()
    seen = []
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv(threads.ENV, "1")
    budget = threads.ThreadBudget()
    budget.on_train_begin(None, None, None)
    seen.append(torch.get_num_threads())
    budget.restore()
    assert seen == [1] and torch.get_num_threads() == start
    monkeypatch.setenv(threads.ENV, "many")
    with pytest.raises(ValueError, match="TUNEFORGE_NUM_THREADS='many'"):
        threads.ThreadBudget().on_train_begin(None, None, None)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torch's own setting is kept as it is
    monkeypatch.setenv(threads.ENV, "2")
    budget = threads.ThreadBudget()
    budget.on_train_begin(None, None, None)
    assert torch.get_num_threads() == start
    budget.restore()
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv(threads.ENV, "auto")
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: 1.0)  # a container allowed one CPU
    budget = threads.ThreadBudget()
    budget.on_train_begin(None, None, None)
    assert torch.get_num_threads() == 1
    budget.restore()
    assert torch.get_num_threads() == start


def test_the_cpu_meter_sees_a_competing_process():
    meter = threads.CpuMeter()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        others = meter.others()
    finally:
        busy.kill()
        busy.wait()
    assert others is not None and others > 0.6, others


def test_evaluation_outside_training_fits_its_threads_too(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv(threads.ENV, "auto")
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: 1.0)
    start, seen = torch.get_num_threads(), []

    class Watch(TrainerCallback):
        def on_prediction_step(self, args, state, control, **kwargs):
            seen.append(torch.get_num_threads())

    model, _ = make_model("bert")
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), disable_tqdm=True),
                      eval_dataset=make_data(16), callbacks=[Watch()])
    trainer.evaluate()
    assert seen and set(seen) == {1} and torch.get_num_threads() == start
