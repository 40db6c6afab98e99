"""Data parallel on CPU: 2 processes (gloo, launched by `accelerate launch` through
relaunch_command) give the same loss curve as 1 process with twice the gradient accumulation.

Tolerance: 1e-5 relative. The updates are the same sums in a different order (each process sums
its half, then all_reduce adds the halves), so only float rounding differs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import trainkit as tk

from chatforge.modeling.train import relaunch_command, train

HERE = Path(__file__).parent

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    sys.path.insert(0, {here!r})
    import trainkit as tk
    from chatforge.modeling.train import train
    torch.set_num_threads(1)
    base, out = Path(sys.argv[1]), Path(sys.argv[2])
    result = train(model_params=tk.scratch_params(), train_params=tk.tparams(**json.loads(sys.argv[3])), base_dir=base,
                   train_turns=tk.turns(48), val_turns=tk.turns(12, seed=1, prefix="v"))
    if result.metrics["process_index"] == 0:
        out.write_text(json.dumps({{"history": result.history, "metrics": result.metrics}}))
    """
)


def test_two_processes_match_one_process_with_double_accumulation(tmp_path):
    torch.set_num_threads(1)
    base = tk.build_base(tmp_path, tk.scratch_params(), tk.turns(48))
    opts = {"batch_size": 2, "max_steps": 5, "eval_every_steps": 5, "max_grad_norm": None}
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT.format(here=str(HERE)), encoding="utf-8")
    out = tmp_path / "ddp.json"
    cmd = relaunch_command(2, [str(script), str(base), str(out), json.dumps({**opts, "grad_accum_steps": 1})])
    assert cmd is not None and "--num_processes" in cmd and cmd[cmd.index("--num_processes") + 1] == "2"
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "ACCELERATE_LAUNCHED")}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = json.loads(out.read_text())
    single = train(model_params=tk.scratch_params(), train_params=tk.tparams(**opts, grad_accum_steps=2), base_dir=base,
                   train_turns=tk.turns(48), val_turns=tk.turns(12, seed=1, prefix="v"))
    assert ddp["metrics"]["num_processes"] == 2 and single.metrics["num_processes"] == 1
    ddp_curve = [r["train/loss"] for r in ddp["history"]]
    one_curve = [r["train/loss"] for r in single.history]
    assert len(ddp_curve) == len(one_curve) == 5
    assert ddp_curve == pytest.approx(one_curve, rel=1e-5)
    assert ddp["metrics"]["val_loss"] == pytest.approx(single.metrics["val_loss"], rel=1e-5)
    assert ddp_curve[-1] < ddp_curve[0]  # and it does train


def test_relaunch_is_skipped_inside_a_launched_process(monkeypatch):
    assert relaunch_command(1, ["x.py"]) is None
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert relaunch_command(2, ["x.py"]) is None
    monkeypatch.delenv("LOCAL_RANK")
    cmd = relaunch_command(2, ["x.py", "a"])
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"] and cmd[-2:] == ["x.py", "a"]
    assert "--multi_gpu" in cmd  # torchrun launcher; gloo when the processes run on CPU
