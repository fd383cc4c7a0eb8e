"""Teacher backends behind one interface: vLLM offline, any OpenAI-compatible endpoint, our JAX engine.

`generate(messages_batch, params)` returns one item per conversation: the text, or an exception
(or None) for a failure that the caller counts and logs; one bad item never fails the batch.
vLLM and the JAX engine are imported only when chosen, so this module costs nothing on CPU.
"""
from __future__ import annotations

import dataclasses
import email.utils
import http.client
import json
import logging
import os
import random
import re
import socket
import time
import urllib.error
import urllib.request
from concurrent import futures
from typing import Any, Callable, Protocol

log = logging.getLogger(__name__)
Messages = list[dict[str, str]]


class GenerationError(Exception):
  """A failed generation for one conversation (counted, not raised through the run)."""


class ContextTooLong(GenerationError):
  """The rendered prompt does not fit the model's context window."""


class ClientError(GenerationError):
  """An HTTP 4xx the server will answer the same way on every retry (bad model name, bad key, bad schema)."""

  def __init__(self, code: int, detail: str):
    super().__init__(f"HTTP {code}: {detail}")
    self.code, self.detail = code, detail


class Completion(str):
  """Generated text that also carries why generation stopped (stop | length | ...; "" = unknown)."""
  finish_reason: str = ""

  def __new__(cls, text: str, finish_reason: str = "") -> "Completion":
    obj = super().__new__(cls, text)
    obj.finish_reason = finish_reason or ""
    return obj


# How servers word "prompt longer than the context window" in a 400/413 body: vLLM ("maximum context
# length", "is longer than the maximum model length"), OpenAI (context_length_exceeded), TGI and others.
_TOO_LONG = re.compile(r"context[_ ]length|maximum context|maximum model length|too many tokens|"
                       r"prompt is too long|input is too long|exceeds? the model", re.I)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  temperature: float = 0.7
  top_p: float = 0.95
  top_k: int = 0  # 0 = off
  max_tokens: int = 1024
  seed: int = 0
  structured: str = ""  # "" | json_schema | json_object: constrain the output where the engine can
  json_schema: dict | None = None  # the schema used by structured="json_schema"


class Backend(Protocol):
  name: str
  model: str

  def generate(self, messages_batch: list[Messages], params: SamplingParams) -> list[str | Exception | None]:
    ...


def sampling_params(tcfg: Any, json_schema: dict | None = None, seed: int | None = None) -> SamplingParams:
  """SamplingParams from a teacher config section."""
  return SamplingParams(
    temperature=float(tcfg.temperature), top_p=float(tcfg.top_p), top_k=int(tcfg.top_k),
    max_tokens=int(tcfg.max_tokens), seed=int(tcfg.seed if seed is None else seed),
    structured=str(tcfg.structured), json_schema=json_schema)


def make_backend(tcfg: Any, name: str) -> Backend:
  """Build the backend a teacher config section names (tcfg.backend: vllm | openai | jax)."""
  kind = tcfg.backend
  if kind == "openai":
    return OpenAIBackend.from_config(tcfg, name)
  if kind == "vllm":
    return VllmBackend.from_config(tcfg, name)
  if kind == "jax":
    return JaxBackend.from_path(tcfg.model, name=name, max_context=int(tcfg.max_model_len))
  raise ValueError(f"teacher {name!r}: unknown backend {kind!r} (expected vllm | openai | jax)")


def generate_safe(backend: Backend, batch: list[Messages], params: SamplingParams) -> list[Any]:
  """backend.generate that never raises: a failing batch is retried item by item."""
  try:
    out = list(backend.generate(batch, params))
    if len(out) != len(batch):
      raise GenerationError(f"backend returned {len(out)} outputs for {len(batch)} prompts")
    return out
  except Exception as e:  # noqa: BLE001 -- any engine error becomes a counted failure
    if len(batch) == 1:
      return [e]
    log.warning("%s: batch of %d failed (%s); retrying one by one", backend.name, len(batch), e)
    return [generate_safe(backend, [m], params)[0] for m in batch]


# ---------------------------------------------------------------- OpenAI-compatible HTTP endpoint

def openai_request_body(model: str, messages: Messages, params: SamplingParams) -> dict:
  """The /chat/completions JSON body (top_k only when set: OpenAI itself rejects it)."""
  body = {"model": model, "messages": messages, "temperature": params.temperature,
          "top_p": params.top_p, "max_tokens": params.max_tokens, "seed": params.seed}
  if params.top_k > 0:
    body["top_k"] = params.top_k
  if params.structured == "json_object":
    body["response_format"] = {"type": "json_object"}
  elif params.structured == "json_schema" and params.json_schema is not None:
    # OpenAI's form, which vLLM serve accepts too; the schema's root is an object ({"pairs": [...]}),
    # the only root every grammar-constrained server starts from
    body["response_format"] = {"type": "json_schema",
                               "json_schema": {"name": "output", "schema": params.json_schema, "strict": True}}
  return body


def _retry_after_s(headers: Any) -> float | None:
  value = headers.get("Retry-After") if headers is not None else None
  if not value:
    return None
  try:
    return max(0.0, float(value))
  except ValueError:
    try:  # the HTTP-date form
      return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
      return None


class OpenAIBackend:
  """POST {base_url}/chat/completions with a thread pool, timeouts and exponential backoff."""

  def __init__(self, base_url: str, model: str, *, name: str = "openai", api_key: str = "",
               concurrency: int = 8, timeout_s: float = 120.0, max_tries: int = 5,
               backoff_s: float = 1.0, max_backoff_s: float = 60.0):
    if not base_url:
      raise ValueError(f"teacher {name!r}: base_url is empty")
    self.name, self.model = name, model
    self.url = base_url.rstrip("/") + "/chat/completions"
    self.api_key, self.concurrency, self.timeout_s = api_key, max(1, concurrency), timeout_s
    self.max_tries, self.backoff_s, self.max_backoff_s = max(1, max_tries), backoff_s, max_backoff_s
    self.stats = {"requests": 0, "retries": 0, "failures": 0, "too_long": 0, "responses": 0,
                  "prompt_tokens": 0, "completion_tokens": 0}

  @classmethod
  def from_config(cls, tcfg: Any, name: str) -> "OpenAIBackend":
    key = ""
    if tcfg.api_key_env:  # the config names the variable; the key itself never sits in a config
      key = os.environ.get(tcfg.api_key_env, "")
      if not key:
        raise ValueError(f"teacher {name!r}: environment variable {tcfg.api_key_env} (api_key_env) is not set")
    return cls(tcfg.base_url, tcfg.model, name=name, api_key=key, concurrency=int(tcfg.concurrency),
               timeout_s=float(tcfg.timeout_s), max_tries=int(tcfg.max_tries),
               backoff_s=float(tcfg.backoff_s), max_backoff_s=float(tcfg.max_backoff_s))

  def _delay(self, attempt: int, retry_after: float | None) -> float:
    delay = self.backoff_s * 2 ** attempt
    if retry_after is not None:  # the server knows best when it will take requests again
      delay = max(delay, retry_after)
    delay = min(delay, self.max_backoff_s)
    return delay * (1 + 0.1 * random.random())  # jitter: concurrent workers do not retry in lockstep

  def _post(self, body: dict) -> Completion:
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if self.api_key:
      headers["Authorization"] = f"Bearer {self.api_key}"
    error: Exception = GenerationError("no attempt made")
    for attempt in range(self.max_tries):
      retry_after = None
      self.stats["requests"] += 1
      try:
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
          payload = json.loads(resp.read().decode("utf-8"))
        self.stats["responses"] += 1
        usage = payload.get("usage") if isinstance(payload, dict) else None
        if isinstance(usage, dict):  # the server's own token counts, when it reports them
          self.stats["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
          self.stats["completion_tokens"] += int(usage.get("completion_tokens") or 0)
        try:
          choice = payload["choices"][0]
          return Completion(choice["message"]["content"] or "", str(choice.get("finish_reason") or ""))
        except (KeyError, IndexError, TypeError, AttributeError):
          raise GenerationError(f"malformed response: {str(payload)[:200]}") from None
      except urllib.error.HTTPError as e:
        detail = e.read()[:300].decode("utf-8", "replace")
        e.close()
        if e.code in (400, 413) and _TOO_LONG.search(detail):
          self.stats["too_long"] += 1
          raise ContextTooLong(f"HTTP {e.code}: {detail}") from None
        if e.code != 429 and e.code < 500:  # a client error will not change on retry
          raise ClientError(e.code, detail) from None
        error = GenerationError(f"HTTP {e.code} after {attempt + 1} tries: {detail}")
        retry_after = _retry_after_s(e.headers)
      except (TimeoutError, socket.timeout, urllib.error.URLError, ConnectionError,
              http.client.HTTPException, json.JSONDecodeError) as e:
        error = GenerationError(f"{type(e).__name__} after {attempt + 1} tries: {e}")
      if attempt + 1 < self.max_tries:
        self.stats["retries"] += 1
        time.sleep(self._delay(attempt, retry_after))
    raise error

  def _one(self, messages: Messages, params: SamplingParams) -> str | Exception:
    try:
      return self._post(openai_request_body(self.model, messages, params))
    except ContextTooLong as e:
      return e
    except Exception as e:  # noqa: BLE001 -- counted per item
      self.stats["failures"] += 1
      return e

  def generate(self, messages_batch: list[Messages], params: SamplingParams) -> list[str | Exception]:
    with futures.ThreadPoolExecutor(max_workers=self.concurrency) as pool:
      return list(pool.map(lambda m: self._one(m, params), messages_batch))


# ---------------------------------------------------------------- vLLM offline engine

REQUIREMENTS_HINT = ("the 'vllm' backend needs vLLM, which pins its own torch and transformers: "
                     "install it in a separate environment on a GPU node with "
                     "`pip install -r requirements-gen.txt`")


def _import_vllm() -> Any:
  try:
    import vllm  # noqa: PLC0415 -- optional, GPU nodes only
  except ImportError as e:
    raise ImportError(f"vllm is not installed: {REQUIREMENTS_HINT}") from e
  return vllm


def vllm_engine_kwargs(tcfg: Any) -> dict:
  """Keyword arguments of vllm.LLM(...) for a teacher config section."""
  if not tcfg.model:
    raise ValueError("vllm teacher: `model` (a local checkpoint directory) is empty")
  kw = {"model": tcfg.model, "tensor_parallel_size": int(tcfg.tensor_parallel_size), "dtype": tcfg.dtype,
        "gpu_memory_utilization": float(tcfg.gpu_memory_utilization), "seed": int(tcfg.seed)}
  if int(tcfg.max_model_len) > 0:
    kw["max_model_len"] = int(tcfg.max_model_len)
  return kw


def structured_output_kwargs(sampling_module: Any, schema: dict) -> dict:
  """JSON-schema constrained decoding, vLLM's structured-outputs API (requirements-gen.txt pins vLLM 0.11.0:
  `SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))`; guided_decoding is gone in 0.12)."""
  if not hasattr(sampling_module, "StructuredOutputsParams"):
    raise ImportError(f"this vLLM has no vllm.sampling_params.StructuredOutputsParams; {REQUIREMENTS_HINT}")
  return {"structured_outputs": sampling_module.StructuredOutputsParams(json=schema)}


def vllm_sampling_kwargs(params: SamplingParams, sampling_module: Any = None) -> dict:
  """Keyword arguments of vllm.SamplingParams(...); structured output when asked and available."""
  kw = {"temperature": params.temperature, "top_p": params.top_p,
        "top_k": params.top_k if params.top_k > 0 else -1,  # -1 = off in every vLLM version
        "max_tokens": params.max_tokens, "seed": params.seed, "n": 1}
  if params.structured and params.json_schema is not None and sampling_module is not None:
    kw.update(structured_output_kwargs(sampling_module, params.json_schema))
  return kw


def _chat_ids(tokenizer: Any, messages: Messages) -> list[int]:
  ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
  if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding by default
    ids = ids["input_ids"]
  return list(ids)


class VllmBackend:
  """vllm.LLM(...).chat(...) on a local checkpoint, prompts too long for the engine skipped."""

  def __init__(self, llm: Any, sampling_module: Any, *, name: str, model: str, max_model_len: int = 0):
    self.llm, self.sampling_module, self.name, self.model = llm, sampling_module, name, model
    self.max_model_len = max_model_len
    if not self.max_model_len:
      try:  # the engine's resolved limit (model default when the config left it at 0)
        self.max_model_len = int(llm.llm_engine.model_config.max_model_len)
      except AttributeError:
        self.max_model_len = 0

  @classmethod
  def from_config(cls, tcfg: Any, name: str) -> "VllmBackend":
    vllm = _import_vllm()
    import vllm.sampling_params as sampling_module  # noqa: PLC0415 -- optional, GPU nodes only
    llm = vllm.LLM(**vllm_engine_kwargs(tcfg))
    return cls(llm, sampling_module, name=name, model=tcfg.model, max_model_len=int(tcfg.max_model_len))

  def generate(self, messages_batch: list[Messages], params: SamplingParams) -> list[Any]:
    import vllm  # noqa: PLC0415 -- optional, GPU nodes only
    out: list[Any] = [None] * len(messages_batch)
    keep = list(range(len(messages_batch)))
    if self.max_model_len:  # vLLM rejects a whole batch for one over-long prompt: filter first
      tok = self.llm.get_tokenizer()
      keep = []
      for i, m in enumerate(messages_batch):
        n = len(_chat_ids(tok, m))
        if n >= self.max_model_len:
          out[i] = ContextTooLong(f"prompt has {n} tokens, max_model_len is {self.max_model_len}")
        else:
          keep.append(i)
    if keep:
      sp = vllm.SamplingParams(**vllm_sampling_kwargs(params, self.sampling_module))
      results = self.llm.chat([messages_batch[i] for i in keep], sp, use_tqdm=False)
      for i, r in zip(keep, results):
        out[i] = (Completion(r.outputs[0].text, str(r.outputs[0].finish_reason or "")) if r.outputs
                  else GenerationError("no output"))
    return out


# ---------------------------------------------------------------- our JAX engine

_EOS_TOKENS = ("<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "</s>")
_CONTEXT_FIELDS = ("max_seq_len", "max_position_embeddings", "max_len", "seq_len")


class JaxBackend:
  """hinqa_jax.decode.generate on an HF-format checkpoint or an in-memory (cfg, params, tokenizer)."""

  def __init__(self, cfg: Any, params: Any, tokenizer: Any, *, name: str = "jax", model: str = "",
               max_context: int = 0, generate_fn: Callable | None = None):
    self.cfg, self.params, self.tokenizer, self.name, self.model = cfg, params, tokenizer, name, model
    self.max_context = max_context or next(
      (int(v) for v in (getattr(cfg, f, 0) for f in _CONTEXT_FIELDS) if isinstance(v, int) and v > 0), 0)
    self._generate = generate_fn
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    eos = getattr(tokenizer, "eos_token_id", None)
    ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    ids.update(vocab[t] for t in _EOS_TOKENS if t in vocab)
    self.eos_ids = sorted(int(i) for i in ids)

  @classmethod
  def from_loaded(cls, cfg: Any, params: Any, tokenizer: Any, name: str = "jax", **kw: Any) -> "JaxBackend":
    """Wrap a model already in memory (e.g. the student the pipeline has just trained)."""
    return cls(cfg, params, tokenizer, name=name, **kw)

  @classmethod
  def from_path(cls, path: str, name: str = "jax", max_context: int = 0) -> "JaxBackend":
    """Load an HF-format checkpoint directory (weights and tokenizer)."""
    if not path or not os.path.isdir(path):
      raise ValueError(f"teacher {name!r}: model directory {path!r} does not exist")
    from hinqa_jax import hf, tokenizer  # noqa: PLC0415 -- keeps `import gen` light
    cfg, params = hf.load_hf(path)
    return cls(cfg, params, tokenizer.load_tokenizer(path), name=name, model=path, max_context=max_context)

  def _run(self, prompts: list[list[int]], max_new: int, params: SamplingParams) -> list[list[int]]:
    fn = self._generate
    if fn is None:
      from hinqa_jax import decode  # noqa: PLC0415 -- keeps `import gen` light
      fn = decode.generate
    return fn(self.cfg, self.params, prompts, max_new_tokens=max_new, temperature=params.temperature,
              top_k=params.top_k, top_p=params.top_p, seed=params.seed, eos_ids=self.eos_ids)

  def generate(self, messages_batch: list[Messages], params: SamplingParams) -> list[Any]:
    out: list[Any] = [None] * len(messages_batch)
    fits, tight = [], []  # full budget fits / only a shorter budget fits the context window
    ids = [_chat_ids(self.tokenizer, m) for m in messages_batch]
    for i, p in enumerate(ids):
      if self.max_context and len(p) >= self.max_context:
        out[i] = ContextTooLong(f"prompt has {len(p)} tokens, model context is {self.max_context}")
      elif self.max_context and len(p) + params.max_tokens > self.max_context:
        tight.append(i)
      else:
        fits.append(i)
    # max_new_tokens is static under jit: tight budgets are rounded down to multiples of 32 and
    # grouped, so a batch of long prompts compiles a few programs rather than one per prompt.
    groups: dict[int, list[int]] = {params.max_tokens: fits}
    for i in tight:
      room = self.max_context - len(ids[i])
      groups.setdefault(room if room < 32 else room // 32 * 32, []).append(i)
    for budget, idx in groups.items():
      if idx:
        new = self._run([ids[i] for i in idx], budget, params)
        for i, toks in zip(idx, new):
          toks = list(toks)
          # decode.generate stops at an eos id or after `budget` tokens: the latter is a truncation
          hit_eos = bool(toks) and int(toks[-1]) in self.eos_ids or len(toks) < budget
          out[i] = Completion(self.tokenizer.decode(toks, skip_special_tokens=True), "stop" if hit_eos else "length")
    return out
