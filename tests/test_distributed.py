"""Data-parallel training under a real torchrun (2 CPU processes, gloo) against one process."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).parent
TORCHRUN = Path(sys.executable).with_name("torchrun")


def run(cmd, timeout=600, **extra_env):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE), **extra_env}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE, env=env)


def torchrun(*args):
    return [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", *args]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not TORCHRUN.exists():
        pytest.skip("torchrun not found beside the interpreter")
    single, ddp = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("ddp")
    one = run([sys.executable, str(HERE / "ddp_child.py"), str(single), "32"])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run(torchrun(str(HERE / "ddp_child.py"), str(ddp), "16"))
    assert two.returncode == 0, two.stderr[-3000:]
    return single, ddp


def weights_close(a_folder, b_folder, atol=1e-4):
    a, b = load_file(a_folder / "result" / "model.safetensors"), load_file(b_folder / "result" / "model.safetensors")
    return max((a[k] - b[k]).abs().max().item() for k in a) < atol


def losses(folder):
    return {e["step"]: e["loss"] for e in history(folder) if "loss" in e}


def history(folder):
    return json.loads((folder / "result" / "log_history.json").read_text())


def test_two_workers_of_16_match_one_process_of_32(runs):
    single, ddp = runs
    losses_1, losses_2 = losses(single), losses(ddp)
    assert sorted(losses_1) == sorted(losses_2) == list(range(1, 13))
    for step in losses_1:
        assert losses_2[step] == pytest.approx(losses_1[step], rel=1e-3), step
    assert weights_close(single, ddp)


@pytest.mark.parametrize("extra_env", [{"TEST_ACCUM": "2"}, {"TEST_FSDP": "1"}], ids=["accumulation", "fsdp"])
def test_accumulation_and_fsdp_under_torchrun_match_one_process(runs, tmp_path, extra_env):
    """Two workers x 8 x accumulation 2, and FSDP-sharded 2 x 16: the same global batch of 32."""
    single, _ = runs
    batch = "8" if "TEST_ACCUM" in extra_env else "16"
    done = run(torchrun(str(HERE / "ddp_child.py"), str(tmp_path), batch), **extra_env)
    assert done.returncode == 0, done.stderr[-3000:]
    for step, loss in losses(single).items():
        assert losses(tmp_path)[step] == pytest.approx(loss, rel=1e-3), step
    assert weights_close(single, tmp_path)
    # An overridden get_eval_dataloader: under FSDP (collective forwards) every process evaluates the whole set.
    o1, o2 = (json.loads((f / "result" / "eval.json").read_text())["override"] for f in (single, tmp_path))
    assert o2["steps_per_rank"] == ([15, 15] if "TEST_FSDP" in extra_env else [8, 7])
    assert o2["eval_n"] == o1["eval_n"] == 101 and o2["eval_label_sum"] == o1["eval_label_sum"]
    assert o2["eval_accuracy"] == pytest.approx(o1["eval_accuracy"])
    assert o2["eval_loss"] == pytest.approx(o1["eval_loss"], rel=1e-4)
    from tuneforge import AutoModelForSequenceClassification  # a sharded run's checkpoint loads in one process
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "checkpoint-12")
    expected = load_file(tmp_path / "result" / "model.safetensors")
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_evaluation_counts_every_example_once(runs):
    single, ddp = runs
    e1 = json.loads((single / "result" / "eval.json").read_text())
    e2 = json.loads((ddp / "result" / "eval.json").read_text())
    assert e1["eval_n"] == e2["eval_n"] == 101  # not a multiple of the world size
    assert e2["eval_label_sum"] == e1["eval_label_sum"]
    assert e2["eval_accuracy"] == pytest.approx(e1["eval_accuracy"])
    assert e2["eval_loss"] == pytest.approx(e1["eval_loss"], rel=1e-4)
    for step in (6, 12):
        mid1 = next(e for e in history(single) if e["step"] == step and "eval_accuracy" in e)
        mid2 = next(e for e in history(ddp) if e["step"] == step and "eval_accuracy" in e)
        assert mid2["eval_accuracy"] == pytest.approx(mid1["eval_accuracy"])


def test_an_overridden_get_eval_dataloader_is_shared_across_processes(runs):
    """A Trainer subclass's own DataLoader (101 rows in 15 batches of 7): each process evaluates its share of the
    batches, and the gathered metrics equal one process's."""
    single, ddp = runs
    e1 = json.loads((single / "result" / "eval.json").read_text())["override"]
    e2 = json.loads((ddp / "result" / "eval.json").read_text())["override"]
    assert e1["steps_per_rank"] == [15] and e2["steps_per_rank"] == [8, 7]
    assert e1["eval_n"] == e2["eval_n"] == 101
    assert e2["eval_label_sum"] == e1["eval_label_sum"]
    assert e2["eval_accuracy"] == pytest.approx(e1["eval_accuracy"])
    assert e2["eval_loss"] == pytest.approx(e1["eval_loss"], rel=1e-4)
    final = json.loads((single / "result" / "eval.json").read_text())  # the built-in loader's figures, the same
    assert e1["eval_accuracy"] == pytest.approx(final["eval_accuracy"])
    assert e1["eval_loss"] == pytest.approx(final["eval_loss"], rel=1e-4)


def test_only_rank_0_writes_and_checkpoints_load_in_one_process(runs):
    _, ddp = runs  # rank 1 ran with an audit hook that fails the run on any write under the output folder
    lines = (ddp / "log.jsonl").read_text().splitlines()
    assert len([line for line in lines if '"loss"' in line]) == 12, "each log entry once, not once per rank"
    assert sorted(p.name for p in ddp.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-6"]
    assert (ddp / "checkpoint-6" / "rng_state_1.pth").is_file()  # rank 1's RNG, written by rank 0
    from tuneforge import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(ddp / "checkpoint-12")
    expected = load_file(ddp / "result" / "model.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_a_killed_worker_ends_the_job_with_a_message(tmp_path):
    if not TORCHRUN.exists():
        pytest.skip("torchrun not found beside the interpreter")
    start = time.monotonic()
    done = run(torchrun(str(HERE / "ddp_child.py"), str(tmp_path), "16", "3"), timeout=300)
    assert done.returncode != 0
    assert time.monotonic() - start < 240
    assert "SIGKILL" in done.stderr or "Signal 9" in done.stderr, done.stderr[-2000:]


@pytest.fixture(scope="module")
def full_torchrun_run(tmp_path_factory):
    """trainer_child.py uninterrupted under torchrun: what the interrupted and resumed runs below must equal."""
    if not TORCHRUN.exists():
        pytest.skip("torchrun not found beside the interpreter")
    full = tmp_path_factory.mktemp("full")
    done = run(torchrun(str(HERE / "trainer_child.py"), str(full), "full", "0"), TEST_BATCH="2")
    assert done.returncode == 0, done.stderr[-3000:]
    return full


def test_resume_under_torchrun_is_exact(tmp_path, full_torchrun_run):
    """Dropout on, shuffling, accumulation 2: killed right after the checkpoint at step 4, resumed under torchrun,
    the same losses and bit-identical weights as an uninterrupted torchrun run (each rank resumes its own RNG)."""
    child = str(HERE / "trainer_child.py")
    full, killed = full_torchrun_run, tmp_path / "killed"
    assert run(torchrun(child, str(killed), "kill_after_save", "4"), TEST_BATCH="2").returncode != 0
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-4"]
    done = run(torchrun(child, str(killed), "resume", "0"), TEST_BATCH="2")
    assert done.returncode == 0, done.stderr[-3000:]
    expected, got = losses(full), losses(killed)
    assert all(got[s] == expected[s] for s in range(5, 13))
    a, b = load_file(full / "result" / "model.safetensors"), load_file(killed / "result" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_to_one_worker_stops_every_rank_after_the_same_step(tmp_path, full_torchrun_run):
    """SIGTERM to rank 1 only, mid-run: the ranks agree on the step (an all-reduced flag), rank 0 writes the
    checkpoint with both ranks' RNG states and says where it is; resumed under torchrun, the run ends bit for bit
    as the uninterrupted one."""
    import signal
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen(torchrun(str(HERE / "trainer_child.py"), str(stopped), "report_progress", "0"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE), "TEST_BATCH": "2"})
    progress, deadline = Path(f"{stopped}.progress-1"), time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        parts = progress.read_text().split() if progress.exists() else []
        if len(parts) == 2 and int(parts[1]) >= 5:
            os.kill(int(parts[0]), signal.SIGTERM)
            break
        time.sleep(0.002)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode != 0
    found = sorted(int(p.name.split("-")[1]) for p in stopped.glob("checkpoint-*"))
    assert found and found[0] == 4 and 5 <= found[-1] <= 7, (found, err[-3000:])
    step = found[-1]
    assert f"training stopped by SIGTERM after step {step} of 12" in err, err[-3000:]
    assert {p.name for p in (stopped / f"checkpoint-{step}").glob("rng_state*")} == {"rng_state.pth",
                                                                                     "rng_state_1.pth"}
    assert not (stopped / "result").exists()
    done = run(torchrun(str(HERE / "trainer_child.py"), str(stopped), "resume", "0"), TEST_BATCH="2")
    assert done.returncode == 0, done.stderr[-3000:]
    expected, got = losses(full_torchrun_run), losses(stopped)
    assert all(got[s] == expected[s] for s in range(step + 1, 13))
    a = load_file(full_torchrun_run / "result" / "model.safetensors")
    b = load_file(stopped / "result" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
