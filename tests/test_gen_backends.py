"""Teacher backends: OpenAI-compatible HTTP (local server), vLLM argument building, JAX engine logic."""
import http.server
import json
import sys
import threading
import time
import types

import pytest

import gen
from gen import backends

MSG = [{"role": "system", "content": "आप सहायक हैं।"}, {"role": "user", "content": "प्रश्न लिखिए"}]
PARAMS = backends.SamplingParams(temperature=0.5, top_p=0.9, max_tokens=64, seed=7)


class Server:
  """A scripted /v1/chat/completions on 127.0.0.1: each request takes the next scripted action."""

  def __init__(self, script, reply=None):
    self.script, self.log, self.lock = list(script), [], threading.Lock()
    self.reply = reply or (lambda body: "उत्तर:" + body["messages"][-1]["content"])
    outer = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *args):  # keep test output clean
        pass

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with outer.lock:
          outer.log.append({"t": time.monotonic(), "path": self.path, "body": body, "auth": self.headers.get("Authorization")})
          action = outer.script.pop(0) if outer.script else ("ok",)
        try:
          if action[0] == "sleep":
            time.sleep(action[1])
            return
          if action[0] == "status":
            self.send_response(action[1])
            for k, v in (action[2] if len(action) > 2 else {}).items():
              self.send_header(k, v)
            self.end_headers()
            self.wfile.write(action[3].encode() if len(action) > 3 else b'{"error": "scripted"}')
            return
          content, finish = outer.reply(body), None
          if isinstance(content, tuple):  # (text, finish_reason)
            content, finish = content
          reply = {"choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": finish}]}
          data = json.dumps(reply, ensure_ascii=False).encode()
          self.send_response(200)
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(data)))
          self.end_headers()
          self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
          pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def serve():
  servers = []

  def start(script=()):
    servers.append(Server(script))
    return servers[-1]
  yield start
  for s in servers:
    s.close()


def client(url, **kw):
  kw = {"concurrency": 1, "timeout_s": 2.0, "max_tries": 3, "backoff_s": 0.05, "max_backoff_s": 1.0, **kw}
  return backends.OpenAIBackend(url, "llama-70b", name="t", **kw)


def test_openai_request_body_auth_and_order(serve, monkeypatch):
  srv = serve()
  monkeypatch.setenv("MY_TEACHER_KEY", "sekret")
  tcfg = gen.teacher("openai", "llama-70b", base_url=srv.url + "/", api_key_env="MY_TEACHER_KEY",
                     concurrency=4, structured="json_object")
  b = backends.make_backend(tcfg, "t")
  batch = [[{"role": "user", "content": f"संदर्भ {i}"}] for i in range(6)]
  params = backends.sampling_params(tcfg, {"type": "array"}, seed=11)
  out = b.generate(batch, params)
  assert out == [f"उत्तर:संदर्भ {i}" for i in range(6)]  # order kept despite 4 threads
  assert len(srv.log) == 6 and all(r["path"] == "/v1/chat/completions" for r in srv.log)
  assert all(r["auth"] == "Bearer sekret" for r in srv.log)
  body = srv.log[0]["body"]
  assert {k: body[k] for k in ("model", "temperature", "top_p", "max_tokens", "seed")} == {
    "model": "llama-70b", "temperature": 0.7, "top_p": 0.95, "max_tokens": 1024, "seed": 11}
  assert body["response_format"] == {"type": "json_object"} and "top_k" not in body
  schema_body = backends.openai_request_body("m", MSG, backends.SamplingParams(top_k=5, structured="json_schema",
                                                                              json_schema={"type": "array"}))
  assert schema_body["response_format"]["json_schema"]["schema"] == {"type": "array"} and schema_body["top_k"] == 5


def test_openai_key_comes_from_named_env_var_only(monkeypatch):
  monkeypatch.delenv("ABSENT_KEY_VAR", raising=False)
  with pytest.raises(ValueError, match="ABSENT_KEY_VAR"):
    backends.make_backend(gen.teacher("openai", "m", base_url="http://127.0.0.1:1/v1", api_key_env="ABSENT_KEY_VAR"), "t")


def test_openai_429_retries_after_retry_after(serve):
  srv = serve([("status", 429, {"Retry-After": "0.4"}), ("status", 429), ("ok",)])
  b = client(srv.url)
  assert b.generate([MSG], PARAMS) == ["उत्तर:प्रश्न लिखिए"]
  assert len(srv.log) == 3 and b.stats == {"requests": 3, "retries": 2, "failures": 0, "too_long": 0, "responses": 1,
                                           "prompt_tokens": 0, "completion_tokens": 0}
  gaps = [srv.log[i + 1]["t"] - srv.log[i]["t"] for i in range(2)]
  assert gaps[0] >= 0.4  # Retry-After honoured (longer than the 0.05 s backoff)
  assert 0.1 <= gaps[1] < 0.4  # then exponential: 0.05 * 2**1


def test_openai_timeout_is_retried(serve):
  srv = serve([("sleep", 1.0), ("ok",)])
  b = client(srv.url, timeout_s=0.3)
  start = time.monotonic()
  assert b.generate([MSG], PARAMS) == ["उत्तर:प्रश्न लिखिए"]
  assert len(srv.log) == 2 and b.stats["retries"] == 1 and time.monotonic() - start < 1.0


def test_openai_gives_up_and_counts_failure_without_raising(serve):
  srv = serve([("status", 503)] * 3 + [("status", 400), ("ok",)])
  b = client(srv.url, max_tries=3)
  out = b.generate([MSG], PARAMS)
  assert isinstance(out[0], backends.GenerationError) and "HTTP 503 after 3 tries" in str(out[0])
  assert len(srv.log) == 3 and b.stats["failures"] == 1
  out = b.generate([MSG, MSG], PARAMS)  # a 400 is not retried; the next item still succeeds
  assert isinstance(out[0], backends.GenerationError) and "HTTP 400" in str(out[0])
  assert out[1] == "उत्तर:प्रश्न लिखिए" and len(srv.log) == 5


def test_openai_endpoint_down_counts_failure():
  b = client("http://127.0.0.1:9/v1", max_tries=2, timeout_s=0.5)  # discard port: nothing listens
  out = b.generate([MSG], PARAMS)
  assert isinstance(out[0], backends.GenerationError) and b.stats == {"requests": 2, "retries": 1, "failures": 1, "too_long": 0, "responses": 0,
                                                                                  "prompt_tokens": 0, "completion_tokens": 0}


def test_vllm_engine_and_sampling_kwargs_without_vllm():
  tcfg = gen.teacher("vllm", "/models/llama70b", tensor_parallel_size=8, max_model_len=8192, seed=3)
  assert backends.vllm_engine_kwargs(tcfg) == {
    "model": "/models/llama70b", "tensor_parallel_size": 8, "dtype": "bfloat16",
    "gpu_memory_utilization": 0.9, "seed": 3, "max_model_len": 8192}
  tcfg.max_model_len = 0
  assert "max_model_len" not in backends.vllm_engine_kwargs(tcfg)
  schema = {"type": "array"}
  new_api = types.SimpleNamespace(StructuredOutputsParams=lambda json: ("structured", json))
  p = backends.SamplingParams(temperature=0.7, top_p=0.95, top_k=0, max_tokens=512, seed=5,
                              structured="json_schema", json_schema=schema)
  base = {"temperature": 0.7, "top_p": 0.95, "top_k": -1, "max_tokens": 512, "seed": 5, "n": 1}
  assert backends.vllm_sampling_kwargs(p, new_api) == {**base, "structured_outputs": ("structured", schema)}
  with pytest.raises(ImportError, match="StructuredOutputsParams"):  # one API, the pinned vLLM's
    backends.vllm_sampling_kwargs(p, types.SimpleNamespace(GuidedDecodingParams=lambda json: json))
  unconstrained = backends.SamplingParams(top_k=20, max_tokens=512, seed=5)
  assert backends.vllm_sampling_kwargs(unconstrained, new_api)["top_k"] == 20
  assert "structured_outputs" not in backends.vllm_sampling_kwargs(unconstrained, new_api)


def test_choosing_vllm_without_vllm_names_requirements_gen(monkeypatch):
  monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError, installed or not
  with pytest.raises(ImportError, match="requirements-gen.txt"):
    backends.make_backend(gen.teacher("vllm", "/models/x"), "llama70b")
  with pytest.raises(ValueError, match="unknown backend 'tgi'"):
    backends.make_backend(gen.teacher("tgi", "x"), "t")


class CharTokenizer:
  """Fake tokenizer: one token per character of the rendered chat; BatchEncoding-like output."""
  eos_token_id = 1

  def apply_chat_template(self, messages, add_generation_prompt, tokenize):
    assert add_generation_prompt and tokenize
    return {"input_ids": [ord(c) for m in messages for c in m["content"]]}

  def get_vocab(self):
    return {"<|eot_id|>": 9, "<|end_of_text|>": 1, "a": 97}

  def decode(self, ids, skip_special_tokens):
    return "".join(chr(i) for i in ids)


def test_vllm_backend_skips_over_long_prompts_with_fake_engine(monkeypatch):
  made = []
  fake_vllm = types.SimpleNamespace(SamplingParams=lambda **kw: made.append(kw) or kw)
  monkeypatch.setitem(sys.modules, "vllm", fake_vllm)

  class FakeLLM:
    def __init__(self):
      self.calls = []

    def get_tokenizer(self):
      return CharTokenizer()

    def chat(self, batch, sp, use_tqdm):
      self.calls.append(batch)
      return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text="T" + m[0]["content"], finish_reason="stop")]) for m in batch]

  llm = FakeLLM()
  b = backends.VllmBackend(llm, types.SimpleNamespace(), name="v", model="m", max_model_len=10)
  out = b.generate([[{"role": "user", "content": "short"}], [{"role": "user", "content": "x" * 10}]], PARAMS)
  assert out[0] == "Tshort" and isinstance(out[1], backends.ContextTooLong)
  assert len(llm.calls) == 1 and len(llm.calls[0]) == 1 and made[0]["seed"] == 7


def test_jax_backend_budgets_skips_and_stops(monkeypatch):
  calls = []

  def fake_generate(cfg, params, prompts, max_new_tokens, temperature, top_k, top_p, seed, eos_ids):
    calls.append((len(prompts), max_new_tokens, temperature, seed, tuple(eos_ids)))
    return [[ord("ok"[i % 2]) for i in range(2)] for _ in prompts]

  cfg = types.SimpleNamespace(max_seq_len=20)
  b = backends.JaxBackend.from_loaded(cfg, {}, CharTokenizer(), name="student", generate_fn=fake_generate)
  assert b.max_context == 20 and b.eos_ids == [1, 9]
  msgs = [[{"role": "user", "content": "abc"}], [{"role": "user", "content": "d" * 15}],
          [{"role": "user", "content": "e" * 25}], [{"role": "user", "content": "fg"}]]
  out = b.generate(msgs, backends.SamplingParams(temperature=0.0, max_tokens=8, seed=3))
  assert out[0] == out[1] == out[3] == "ok" and isinstance(out[2], backends.ContextTooLong)
  # prompts 0 and 3 share the full budget; prompt 1 (15 tokens) gets the 5 that still fit
  assert calls == [(2, 8, 0.0, 3, (1, 9)), (1, 5, 0.0, 3, (1, 9))]


def test_generate_safe_isolates_a_failing_item():
  class Flaky:
    name, model = "flaky", "m"

    def generate(self, batch, params):
      if any(m[0]["content"] == "bad" for m in batch):
        raise RuntimeError("engine fell over")
      return [m[0]["content"].upper() for m in batch]

  out = backends.generate_safe(Flaky(), [[{"role": "user", "content": c}] for c in ("a", "bad", "c")], PARAMS)
  assert out[0] == "A" and out[2] == "C" and isinstance(out[1], RuntimeError)


def test_openai_structured_output_root_is_an_object_and_finish_reason_is_kept(serve):
  from gen import prompts
  srv = serve()
  srv.reply = lambda body: ('{"pairs": [', "length")
  tcfg = gen.teacher("openai", "m", base_url=srv.url, structured="json_schema")
  out = backends.make_backend(tcfg, "t").generate([MSG], backends.sampling_params(tcfg, prompts.PAIRS_SCHEMA))
  fmt = srv.log[0]["body"]["response_format"]
  assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
  assert fmt["json_schema"]["schema"]["type"] == "object" and fmt["json_schema"]["schema"]["required"] == ["pairs"]
  assert out == ['{"pairs": ['] and out[0].finish_reason == "length"
  assert '{"pairs": [' in prompts.build_messages("Museum", "संदर्भ।", [], 3)[1]["content"]


def test_openai_prompt_too_long_is_classified_too_long(serve):
  # vLLM serve's wording of an over-long prompt (a 400 that no retry can fix)
  msg = ('{"object": "error", "message": "This model\'s maximum context length is 4096 tokens. However, you '
         'requested 9000 tokens (8000 in the messages, 1000 in the completion).", "code": 400}')
  srv = serve([("status", 400, {}, msg), ("status", 400, {}, '{"message": "Invalid model name"}')])
  b = client(srv.url)
  out = b.generate([MSG, MSG], PARAMS)
  assert isinstance(out[0], backends.ContextTooLong) and "maximum context length" in str(out[0])
  assert isinstance(out[1], backends.ClientError) and out[1].code == 400
  assert b.stats["too_long"] == 1 and b.stats["failures"] == 1 and len(srv.log) == 2
