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


def run(cmd, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
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


def history(folder):
    return json.loads((folder / "result" / "log_history.json").read_text())


def test_two_workers_of_16_match_one_process_of_32(runs):
    single, ddp = runs
    losses_1 = {e["step"]: e["loss"] for e in history(single) if "loss" in e}
    losses_2 = {e["step"]: e["loss"] for e in history(ddp) if "loss" in e}
    assert sorted(losses_1) == sorted(losses_2) == list(range(1, 13))
    for step in losses_1:
        assert losses_2[step] == pytest.approx(losses_1[step], rel=1e-3), step
    a, b = load_file(single / "result" / "model.safetensors"), load_file(ddp / "result" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


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
