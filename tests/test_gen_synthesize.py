"""Synthesis: records and provenance, failure counting, crash-resume without duplicates, sharding, CLI."""
import json
import os
import subprocess
import sys

import pytest

import gen
from gen import backends, prompts
from gen.synthesize import context_id, in_shard, parse_shard

DOMAINS = ("Ganga Aarti", "Museum", "Food Court")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_records(n=6):
  out = []
  for i in range(n):
    ctx = f"संदर्भ संख्या {i}: यह घाट बहुत पुराना है और यहाँ हर दिन {i + 2} नावें चलती हैं। यहाँ शाम को आरती होती है।"
    for j in range(2):
      out.append({"id": f"o{i}-{j}", "domain": DOMAINS[i % 3], "context": ctx,
                  "question": f"घाट {i} पर कितनी नावें चलती हैं {j}?", "answer": f"घाट {i} पर हर दिन {i + 2} नावें चलती हैं।"})
  return out


def number_of(messages):
  return int(messages[1]["content"].split("संदर्भ संख्या ")[1].split(":")[0])


class Scripted:
  """A teacher that answers in JSON about the context's number; scripted misbehaviour per number."""
  name, model = "scripted", "fake-70b"

  def __init__(self, crash_on_call=None, behaviour=None):
    self.calls, self.prompts, self.crash_on_call, self.behaviour = 0, [], crash_on_call, behaviour or {}

  def generate(self, batch, params):
    self.calls += 1
    if self.crash_on_call == self.calls:
      raise KeyboardInterrupt("simulated kill")  # not an Exception: nothing may catch it
    out = []
    for m in batch:
      i = number_of(m)
      self.prompts.append(i)
      kind = self.behaviour.get(i, "ok")
      if kind == "garbage":
        out.append("मैं यह नहीं कर सकता।")
      elif kind == "fail":
        out.append(backends.GenerationError("HTTP 503 after 5 tries"))
      elif kind == "too_long":
        out.append(backends.ContextTooLong("prompt has 9000 tokens"))
      else:
        pairs = [{"question": f"संदर्भ {i} में प्रश्न {k}?", "answer": f"संदर्भ {i} का उत्तर {k} है।"} for k in range(2)]
        out.append("```json\n" + json.dumps(pairs, ensure_ascii=False) + "\n```")
    return out


def config(tmp_path, batch_size=2, **synth):
  c = gen.default_config()
  c.out_dir = str(tmp_path / "gen")
  c.teachers.llama = gen.teacher("openai", "fake-70b", base_url="http://127.0.0.1:1/v1", batch_size=batch_size)
  c.synth.progress = False
  for k, v in synth.items():
    setattr(c.synth, k, v)
  return c


def read_jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_records_provenance_and_prompts(tmp_path):
  c = config(tmp_path)
  teacher = Scripted()
  summary = gen.synthesize(c, records=make_records(3), backends={"llama": teacher})
  rows = read_jsonl(os.path.join(c.out_dir, "llama.jsonl"))
  assert len(rows) == 6 and summary["teachers"]["llama"]["pairs"] == 6
  r = rows[0]
  assert set(r) == {"id", "domain", "context", "question", "answer", "source", "provenance"}
  assert r["source"] == "llama" and r["question"] == "संदर्भ 0 में प्रश्न 0?" and r["domain"] == "Ganga Aarti"
  p = r["provenance"]
  assert p["context_id"] == context_id("Ganga Aarti", r["context"]) and r["id"] == f"llama-{p['context_id']}-0-0"
  assert (p["teacher"], p["backend"], p["model"], p["shard"]) == ("llama", "openai", "fake-70b", "0/1")
  assert p["prompt_version"] == prompts.PROMPT_VERSION and p["template_hash"] == prompts.template_hash()
  assert p["sampling"]["temperature"] == 0.7 and p["parse_status"] == "ok" and isinstance(p["batch_seed"], int)
  assert summary["teachers"]["llama"]["status"] == {"ok": 3, "salvaged": 0, "garbage": 0, "failed": 0, "too_long": 0}
  assert json.load(open(os.path.join(c.out_dir, "summary.json")))["contexts"] == 3


def test_failures_are_counted_logged_and_failed_ones_retried(tmp_path):
  c = config(tmp_path, batch_size=3)
  teacher = Scripted(behaviour={1: "garbage", 2: "fail", 4: "too_long"})
  s = gen.synthesize(c, records=make_records(6), backends={"llama": teacher})["teachers"]["llama"]
  assert s["status"] == {"ok": 3, "salvaged": 0, "garbage": 1, "failed": 1, "too_long": 1} and s["pairs"] == 6
  rows = read_jsonl(os.path.join(c.out_dir, "llama.jsonl"))
  assert sorted({int(r["question"].split()[1]) for r in rows}) == [0, 3, 5]
  done = {e["context_id"]: e for e in read_jsonl(os.path.join(c.out_dir, "llama.done.jsonl"))}
  by_number = {int(r["context"].split()[2].rstrip(":")): context_id(r["domain"], r["context"]) for r in make_records(6)}
  assert done[by_number[1]]["raw"] == "मैं यह नहीं कर सकता।" and "503" in done[by_number[2]]["error"]
  # the rerun retries only the failed unit (not garbage, not too long), now successfully
  again = Scripted()
  s = gen.synthesize(c, records=make_records(6), backends={"llama": again})["teachers"]["llama"]
  assert again.prompts == [2] and s["skipped_done"] == 5
  assert s["status"] == {"ok": 4, "salvaged": 0, "garbage": 1, "failed": 0, "too_long": 1} and s["pairs"] == 8


def test_crash_midway_then_resume_completes_only_the_rest(tmp_path):
  records = make_records(6)
  whole = config(tmp_path / "whole")
  gen.synthesize(whole, records=records, backends={"llama": Scripted()})
  c = config(tmp_path / "crashed")
  with pytest.raises(KeyboardInterrupt):
    gen.synthesize(c, records=records, backends={"llama": Scripted(crash_on_call=3)})  # after 2 batches = 4 contexts
  out = os.path.join(c.out_dir, "llama.jsonl")
  assert len(read_jsonl(out)) == 8 and len(read_jsonl(out.replace(".jsonl", ".done.jsonl"))) == 4
  # a torn last line and records of a unit the journal never finished, as a kill mid-write leaves them
  with open(out, "a", encoding="utf-8") as f:
    f.write(json.dumps({**read_jsonl(out)[0], "id": "orphan", "provenance": {"unit": "ffff#0"}}) + "\n")
    f.write('{"id": "torn", "question": "आधा')
  resumed = Scripted()
  s = gen.synthesize(c, records=records, backends={"llama": resumed})["teachers"]["llama"]
  assert resumed.calls == 1 and len(resumed.prompts) == 2 and s["skipped_done"] == 4
  rows = read_jsonl(out)
  assert len(rows) == 12 and len({r["id"] for r in rows}) == 12
  with open(out, "rb") as a, open(os.path.join(whole.out_dir, "llama.jsonl"), "rb") as b:
    assert a.read() == b.read()  # identical to the run that never crashed
  assert gen.synthesize(c, records=records, backends={"llama": Scripted(crash_on_call=1)})["teachers"]["llama"]["skipped_done"] == 6


def test_shards_partition_the_contexts_and_curate_merges_them(tmp_path):
  records = make_records(9)
  c = config(tmp_path, batch_size=4)
  seen = []
  for i in range(3):
    teacher = Scripted()
    s = gen.synthesize(c, shard=f"{i}/3", records=records, backends={"llama": teacher})
    seen.append(set(teacher.prompts))
    assert s["teachers"]["llama"]["output"].endswith(f"llama.shard-{i}-of-3.jsonl")
    assert os.path.exists(os.path.join(c.out_dir, f"summary.shard-{i}-of-3.json"))
  assert set().union(*seen) == set(range(9)) and sum(map(len, seen)) == 9  # disjoint and complete
  cids = {context_id(r["domain"], r["context"]) for r in records}
  assert all(sum(in_shard(cid, (i, 3)) for i in range(3)) == 1 for cid in cids)
  report = gen.curate(c, originals=records, heldout={})
  assert report["inputs"]["files"]["llama"] == [f"llama.shard-{i}-of-3.jsonl" for i in range(3)]
  assert report["inputs"]["missing_shards"] == {"llama": []} and report["totals"]["input"] == 18
  assert parse_shard("2/4") == (2, 4)
  for bad in ("4/4", "x", "1-2", "-1/2"):
    with pytest.raises(ValueError, match="shard"):
      parse_shard(bad)


def test_unknown_teacher_in_only_is_an_error(tmp_path):
  c = config(tmp_path, only=("phi4",))
  with pytest.raises(ValueError, match="phi4"):
    gen.synthesize(c, records=make_records(1), backends={"llama": Scripted()})


def test_cli_synthesize_and_curate_against_local_endpoint(tmp_path):
  from test_gen_backends import Server  # the scripted OpenAI-compatible server

  def reply(body):  # a well-behaved teacher: grounded full-sentence pairs about the context
    i = number_of(body["messages"])
    return json.dumps([{"question": f"घाट {i} पर शाम को क्या होता है?", "answer": f"घाट {i} पर शाम को आरती होती है।"},
                       {"question": f"घाट {i} पर कितनी नावें चलती हैं?", "answer": f"घाट {i} पर हर दिन {i + 2} नावें चलती हैं।"}],
                      ensure_ascii=False)

  srv = Server([], reply)
  try:
    doms = {}
    for r in make_records(4):
      d = doms.setdefault(r["domain"], {"domain": r["domain"], "contexts": []})
      if not d["contexts"] or d["contexts"][-1]["context"] != r["context"]:
        d["contexts"].append({"context": r["context"], "qas": []})
      d["contexts"][-1]["qas"].append({"id": r["id"], "question": r["question"], "answer": r["answer"]})
    train = tmp_path / "train.json"
    train.write_text(json.dumps({"domains": list(doms.values())}, ensure_ascii=False), encoding="utf-8")
    cfg_file = tmp_path / "cfg.py"
    cfg_file.write_text(
      "from gen import default_config, teacher\n\n\ndef get_config():\n  c = default_config()\n"
      f"  c.out_dir = {str(tmp_path / 'out')!r}\n  c.data.train = ({str(train)!r},)\n"
      "  c.data.val = c.data.test1 = c.data.test2 = ''\n"
      f"  c.teachers.llama = teacher('openai', 'm', base_url={srv.url!r}, batch_size=2)\n"
      "  c.synth.progress = False\n  c.lock()\n  return c\n")
    env = {**os.environ, "PYTHONPATH": ROOT}
    run = lambda cmd, *flags: subprocess.run(  # noqa: E731 -- --config must precede its overrides
      [sys.executable, "-m", "gen", cmd, f"--config={cfg_file}", *flags], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    res = run("synthesize", "--shard=0/1", "--config.prompt.num_pairs=2")
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout)
    assert summary["contexts"] == 4 and summary["teachers"]["llama"]["status"]["ok"] == 4
    assert len(srv.log) == 4 and "2 नए प्रश्न-उत्तर" in srv.log[0]["body"]["messages"][1]["content"]
    res = run("curate", "--dry-run")  # counts per filter and threshold, writes nothing
    assert res.returncode == 0, res.stderr[-2000:]
    stats = json.loads(res.stdout)
    assert stats["totals"]["input"] == 8 and "grounding_threshold" in stats["dry_run"]["sweeps"]
    assert not (tmp_path / "out" / "curated").exists()
    res = run("curate")
    assert res.returncode == 0, res.stderr[-2000:]
    # the second pair of each context restates an original QA (with the original's answer): duplicate
    report = json.loads(res.stdout)
    assert report["totals"] == {"input": 8, "kept": 4, "rejected": 4}
    assert report["per_teacher"]["llama"]["rejected"]["duplicate_near"] == 4
    from hinqa_jax.records import read_records
    curated = read_records(tmp_path / "out" / "curated" / "synthetic.jsonl")
    assert sorted(r.question for r in curated) == [f"घाट {i} पर शाम को क्या होता है?" for i in range(4)]
    assert all(r.source == "llama" and r.meta["provenance"]["teacher"] == "llama" for r in curated)
    res = run("translate")
    assert res.returncode != 0 and "synthesize|curate" in res.stderr
    res = run("synthesize", "--config.prompt.num_pair=2")  # locked config: a typo is an error
    assert res.returncode != 0 and "num_pair" in res.stderr
  finally:
    srv.close()


def test_every_request_failing_with_one_client_error_stops_the_run(tmp_path):
  from test_gen_backends import Server
  srv = Server([("status", 404, {}, '{"error": "model fake-70b does not exist"}')] * 4)
  try:
    c = config(tmp_path)
    c.teachers.llama.base_url = srv.url
    with pytest.raises(RuntimeError, match=r"all 2 requests failed with the same client error HTTP 404.*does not exist"):
      gen.synthesize(c, records=make_records(3))
    assert len(srv.log) == 2  # the first batch only: no retries of a 4xx, no further batches
  finally:
    srv.close()


def test_finish_reason_in_provenance_and_truncations_counted(tmp_path):
  class Truncating(Scripted):
    def generate(self, batch, params):
      full = super().generate(batch, params)
      return [backends.Completion(t[:-30], "length") if number_of(m) == 0 else backends.Completion(t, "stop")
              for t, m in zip(full, batch)]
  c = config(tmp_path)
  summary = gen.synthesize(c, records=make_records(2), backends={"llama": Truncating()})["teachers"]["llama"]
  assert summary["truncated"] == 1 and summary["this_run"]["truncated"] == 1
  rows = read_jsonl(os.path.join(c.out_dir, "llama.jsonl"))
  assert {r["provenance"]["finish_reason"] for r in rows} >= {"stop"}
  done = {e["context_id"]: e for e in read_jsonl(os.path.join(c.out_dir, "llama.done.jsonl"))}
  cut = next(e for e in done.values() if e["finish_reason"] == "length")
  assert cut["dropped"].get("truncated") == 1  # the cut-off last item is counted, not silently lost
  report = gen.curate(c, originals=make_records(2), heldout={})
  assert report["parse"]["llama"]["truncated_outputs"] == 1 and report["parse"]["llama"]["dropped_truncated"] == 1


def test_a_teacher_that_fails_too_often_or_writes_nothing_is_an_error(tmp_path):
  """4 of 6 requests 503: over synth.max_failure_rate (0.5), the run stops with an error naming the teacher,
  after its pairs and journal are written; at a higher threshold it goes on. A teacher that writes no pair
  at all is an error too; synth.allow_empty (the CPU demo's stand-ins) reports it instead."""
  records = make_records(6)
  failing = {i: "fail" for i in range(4)}
  c = config(tmp_path)
  with pytest.raises(RuntimeError, match=r"teacher 'llama': 4 of 6 requests failed this run .*max_failure_rate=0.5"):
    gen.synthesize(c, records=records, backends={"llama": Scripted(behaviour=failing)})
  assert len(read_jsonl(os.path.join(c.out_dir, "llama.jsonl"))) == 4  # the two good units' pairs are kept
  c = config(tmp_path / "lenient", max_failure_rate=0.7)
  assert gen.synthesize(c, records=records, backends={"llama": Scripted(behaviour=failing)})["teachers"]["llama"]["pairs"] == 4
  silent = {i: "garbage" for i in range(6)}
  with pytest.raises(RuntimeError, match=r"teacher 'llama': no pair from 6 prompts"):
    gen.synthesize(config(tmp_path / "silent"), records=records, backends={"llama": Scripted(behaviour=silent)})
  c = config(tmp_path / "allowed", allow_empty=True)
  assert gen.synthesize(c, records=records, backends={"llama": Scripted(behaviour=silent)})["teachers"]["llama"]["pairs"] == 0
