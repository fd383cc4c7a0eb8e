"""One process of a multi-process fault scenario (tests/test_faults.py starts two of them).

usage: multihost_worker.py SCENARIO WORKDIR; HINQA_COORDINATOR / HINQA_NUM_PROCESSES / HINQA_PROCESS_ID set.
  raise:   process 1 raises while process 0 waits at a barrier it will never pass.
  skip:    process 1 skips one main_only; the next synchronisation names the two paths.
  preempt: both train a toy stage for many steps; the test sends SIGTERM to process 1 alone.
"""
import logging
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)

from hinqa_jax import distributed  # noqa: E402

scenario, workdir = sys.argv[1], Path(sys.argv[2])
distributed.initialize()
me = distributed.jax.process_index()
with distributed.failing_together():
  if scenario == "raise":
    if me == 1:
      time.sleep(1)
      raise ValueError("a bad record in process 1's rows")
    distributed.barrier("after the rows")  # process 1 never comes
  elif scenario == "skip":
    if me == 0:
      distributed.main_only("begin m1", lambda: None)
    distributed.main_only("done m1", lambda: None)
    distributed.barrier("end")
  elif scenario == "preempt":
    from hinqa_jax import train
    from train_utils import ToyPacked, toy_config

    class Marked(ToyPacked):  # tells the test when training is under way
      def get_batch(self, step, *a, **k):
        if step == 3:
          (workdir / f"at-step-3.{me}").touch()
        time.sleep(0.05)
        return super().get_batch(step, *a, **k)

    train.run_stage(toy_config(steps=100000, every=100000, mesh=(2, 1, 1)), workdir, "s", Marked(), progress=False)
print(f"process {me}: {scenario} finished", file=sys.stderr)
