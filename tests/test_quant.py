"""A quantized frozen base (quant.py): NF4 and int8 bit for bit against bitsandbytes' CPU backend, a LoRA
forward on an NF4 base against transformers + peft + bitsandbytes 4-bit, sharded loading, training."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from bitsandbytes import functional as bnb_f  # pinned in requirements.txt: a missing reference fails, never skips

from hinqa_jax import config as config_lib, hf, lora, model, quant, sharding
from helpers import hf_logits, tiny_hf_model



def _bnb_nf4(w_oi: torch.Tensor, block: int):
  packed, state = bnb_f.quantize_4bit(w_oi, blocksize=block, quant_type="nf4")
  return packed.numpy().reshape(-1), state.absmax.numpy(), bnb_f.dequantize_4bit(packed, state).float().numpy()


# Llama-3.1-8B's k_proj [1024, 4096] and rows of its down_proj [4096, 14336] (HF [out, in]); bf16 as shipped.
@pytest.mark.parametrize("shape,dtype,block", [((1024, 4096), torch.bfloat16, 64), ((256, 14336), torch.float32, 64),
                                               ((96, 256), torch.float32, 128)])
def test_nf4_is_bitsandbytes_bit_for_bit(shape, dtype, block):
  g = torch.Generator().manual_seed(0)
  w = (torch.randn(shape, generator=g) * 0.02).to(dtype)
  w[0, :block] = 0  # an all-zero block (absmax 0)
  w[1, :7] = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.25, 1e-8, -1e-8]).to(dtype)  # code book points and near-zeros
  want_codes, want_absmax, want_w = _bnb_nf4(w, block)
  w_io = w.float().numpy().T.copy()  # our kernels are [in, out]
  for xp_w in (w_io, jnp.asarray(w_io)):  # host loading (numpy) and init (jax) run the same code
    codes, absmax = quant.nf4_quantize(xp_w, block)
    assert codes.dtype == np.uint8 and codes.shape == (shape[1] // 2, shape[0])
    np.testing.assert_array_equal(np.asarray(codes).T.reshape(-1), want_codes)  # bnb's packed bytes
    np.testing.assert_array_equal(np.asarray(absmax).T.reshape(-1), want_absmax)
    out_dtype = jnp.bfloat16 if dtype == torch.bfloat16 else jnp.float32  # bnb dequantizes to the input's dtype
    np.testing.assert_array_equal(np.asarray(quant.nf4_dequantize(codes, absmax, out_dtype), np.float32).T, want_w)
  # The code book is QLoRA's, and the quantization is not the identity.
  np.testing.assert_array_equal(quant.NF4_CODE, bnb_f.get_4bit_type("nf4", device="cpu").numpy())
  assert np.abs(want_w - w.float().numpy()).max() > 1e-4


@pytest.mark.parametrize("shape", [(1024, 4096), (96, 64)])
def test_int8_is_bitsandbytes_vectorwise_int8_bit_for_bit(shape):
  g = torch.Generator().manual_seed(1)
  w = torch.randn(shape, generator=g) * 0.02
  want_q, want_absmax, _ = torch.ops.bitsandbytes.int8_vectorwise_quant(w, 0.0)  # per output row, no outliers
  want_w = bnb_f.int8_vectorwise_dequant(want_q, want_absmax).numpy()
  q, absmax = quant.int8_quantize(w.numpy().T.copy())
  np.testing.assert_array_equal(q.T, want_q.numpy())
  np.testing.assert_array_equal(absmax[0], want_absmax.numpy())
  np.testing.assert_array_equal(quant.int8_dequantize(q, absmax, np.float32).T, want_w)
  jq, jabsmax = quant.int8_quantize(jnp.asarray(w.numpy().T))
  np.testing.assert_array_equal(np.asarray(quant.int8_dequantize(jq, jabsmax)).T, want_w)


def _random_adapters(cfg, lcfg, seed=1):
  ad = lora.init(cfg, lcfg, jax.random.key(seed))
  keys = iter(jax.random.split(jax.random.key(seed + 1), 64))
  return jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape, x.dtype), ad)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tiny_hf")
  tiny_hf_model(d, kv_heads=2, ffn=128)  # 128: NF4 blocks of 64 divide every projection's inputs
  return d


def test_lora_on_an_nf4_base_matches_peft_on_bitsandbytes_4bit(hf_dir, tmp_path):
  from peft import PeftModel
  from transformers import AutoModelForCausalLM, BitsAndBytesConfig
  cfg, params = hf.load_hf(hf_dir, quantize="nf4", quantize_block=64)
  assert set(params["layers"]["mlp"]["up_proj"]) == {"kernel_nf4", "kernel_absmax"}
  lcfg = lora.LoraConfig(rank=4, alpha=8.0)
  adapters = _random_adapters(cfg, lcfg)
  hf.save_peft(tmp_path / "peft", cfg, adapters, lcfg, base_model_name_or_path=str(hf_dir))
  tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 24))
  ours = np.asarray(model.forward(cfg, params, jnp.asarray(tokens), adapters=adapters, lora_cfg=lcfg))

  bnb_cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
                               bnb_4bit_use_double_quant=False)
  base = AutoModelForCausalLM.from_pretrained(hf_dir, quantization_config=bnb_cfg, device_map="cpu",
                                              dtype=torch.float32)
  linears = [m for m in base.modules() if type(m).__name__ == "Linear4bit"]
  assert len(linears) == 7 * cfg.n_layers
  for m in linears:  # bnb's training path (dequantize to float32, then matmul: what QLoRA trains with), not
    m.support_avx512bf16_for_cpu = False  # its CPU inference kernel, which rounds inputs and absmax to bf16
  peft_model = PeftModel.from_pretrained(base, tmp_path / "peft").eval()  # our adapter on bnb's 4-bit base
  theirs = hf_logits(peft_model, tokens)
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
  # Not vacuous: the float base gives other logits (quantization shows), and so does the base without LoRA.
  float_logits = hf_logits(tiny_hf_model(tmp_path / "same", kv_heads=2, ffn=128), tokens)
  assert np.abs(float_logits - theirs).max() > 1e-2
  assert np.abs(np.asarray(model.forward(cfg, params, jnp.asarray(tokens))) - theirs).max() > 1e-2


def test_merged_export_is_the_update_on_the_dequantized_base(hf_dir, tmp_path):
  """save_hf of an NF4 base + adapters: W = dequant(codes) + scale * A @ B in float32, then cast (numpy
  reference built from bitsandbytes' dequantized weights)."""
  from safetensors.numpy import load_file
  cfg, params = hf.load_hf(hf_dir, quantize="nf4", quantize_block=64)
  lcfg = lora.LoraConfig(rank=4, alpha=8.0)
  adapters = _random_adapters(cfg, lcfg, seed=3)
  out = hf.save_hf(tmp_path / "merged", cfg, params, adapters=adapters, lora_cfg=lcfg, dtype="float32")
  got = load_file(str(out / "model.safetensors"))
  src = load_file(str(next(hf_dir.glob("*.safetensors"))))
  name = "model.layers.1.mlp.down_proj.weight"
  _, _, base_w = _bnb_nf4(torch.from_numpy(src[name]), 64)
  a, b = np.asarray(adapters["layers"]["mlp"]["down_proj"]["a"][1]), np.asarray(adapters["layers"]["mlp"]["down_proj"]["b"][1])
  np.testing.assert_allclose(got[name], base_w + np.float32(lcfg.scale) * (a @ b).T, atol=1e-6, rtol=0)
  np.testing.assert_array_equal(got["model.embed_tokens.weight"], src["model.embed_tokens.weight"])  # not quantized
  assert "quantization_config" not in json.loads((out / "config.json").read_text())  # a plain dense model


@pytest.mark.parametrize("mode,mesh_shape", [("nf4", (1, 4, 2)), ("int8", (2, 2, 2))])
def test_sharded_streaming_quantization_equals_whole(hf_dir, mode, mesh_shape):
  """Each device's slice quantized from its own rows (widened to whole blocks) equals quantizing whole
  kernels (the sharded forward and training: test_training_on_an_nf4_base_...)."""
  mesh = sharding.make_mesh(dict(zip(sharding.AXES, mesh_shape)))
  of = lambda path, shape: jax.sharding.NamedSharding(mesh, sharding.param_spec(path, shape, mesh))  # noqa: E731
  _, whole = hf.load_hf(hf_dir, quantize=mode, quantize_block=32)
  _, sharded = hf.load_hf(hf_dir, quantize=mode, quantize_block=32, sharding_of=of)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(sharded), jax.device_get(whole))
  codes = sharded["layers"]["self_attn"]["q_proj"][quant.CODE_LEAF[mode]]
  assert codes.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")  # like the kernel


@pytest.mark.parametrize("mode,remat", [("nf4", "full"), ("int8", "none")])
def test_quantized_base_gives_the_dequantized_float_base_forward_and_gradients(mode, remat):
  """The in-layer dequantization (custom VJP) against the same model with the dequantized kernels as plain
  float weights, under the layer scan with remat: logits and adapter gradients."""
  cfg = model.ModelConfig.preset("tiny", vocab_size=256, quantize=mode, quantize_block=32, remat=remat,
                                 layer_loop="scan")
  params = model.init(cfg, jax.random.key(0))
  dense = jax.tree.map(lambda x: x, params)
  for group, projs in params["layers"].items():
    for name, leaves in projs.items():
      if isinstance(leaves, dict) and quant.SCALE_LEAF in leaves:
        dense["layers"][group][name] = {"kernel": quant.dequantize(leaves)}
  dense_cfg = cfg.replace(quantize="")
  lcfg = lora.LoraConfig(rank=4, alpha=8.0)
  adapters = _random_adapters(cfg, lcfg)
  tokens = jnp.asarray(np.random.RandomState(2).randint(0, 256, (2, 12)))

  def loss(c, p, ad):
    return jnp.mean(jax.nn.log_softmax(model.forward(c, p, tokens, adapters=ad, lora_cfg=lcfg))[..., 7])
  got, g_got = jax.jit(jax.value_and_grad(lambda ad: loss(cfg, params, ad)))(adapters)
  want, g_want = jax.jit(jax.value_and_grad(lambda ad: loss(dense_cfg, dense, ad)))(adapters)
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), g_got, g_want)
  assert float(jnp.abs(g_got["layers"]["mlp"]["down_proj"]["a"]).max()) > 0


def test_config_rules_for_quantize():
  c = config_lib.default_config()
  c.model.quantize = "nf3"
  c.model.quantize_block = 63
  with pytest.raises(ValueError, match="model.quantize='nf3'.*model.quantize_block=63"):
    config_lib.check(c)
  c.model.quantize, c.model.quantize_block, c.train.mode = "nf4", 64, "full"
  with pytest.raises(ValueError, match="needs --config.train.mode=lora"):
    config_lib.check(c)
  with pytest.raises(ValueError, match="quantize_block=48 does not divide"):
    model.ModelConfig.preset("tiny", quantize="nf4", quantize_block=48)


def test_a_block_that_does_not_divide_the_checkpoints_inputs_is_named_with_the_file(hf_dir):
  with pytest.raises(ValueError, match=r"config.json: quantize_block=256 does not divide a projection's input size"):
    hf.load_hf(hf_dir, quantize="nf4", quantize_block=256)


def test_training_on_an_nf4_base_learns_and_sharded_equals_single_device(tmp_path):
  """train.run_stage with model.quantize=nf4: only adapters move, the loss falls, and fsdp x tensor sharding
  of the quantized leaves gives the single device's losses."""
  from hinqa_jax import train
  from hinqa_jax.tracking import read_metrics
  from train_utils import ToyPacked, toy_config

  c = toy_config(steps=4)
  c.model.quantize, c.model.quantize_block = "nf4", 32

  def run(mesh_shape, devices):
    mesh = sharding.make_mesh(dict(zip(sharding.AXES, mesh_shape)), devices=jax.devices()[:devices])
    out = train.run_stage(c, tmp_path / str(devices), "s", ToyPacked(), mesh=mesh, progress=False)
    return [m["loss"] for m in read_metrics(tmp_path / str(devices) / "s")], out

  single, out = run((1, 1, 1), 1)
  sharded, out8 = run((2, 2, 2), 8)
  assert single[-1] < single[0]
  np.testing.assert_allclose(sharded, single, atol=1e-5, rtol=0)
  frozen = out8["frozen"]["layers"]["mlp"]["down_proj"]
  assert frozen["kernel_nf4"].dtype == jnp.uint8 and "kernel" not in frozen
  assert frozen["kernel_nf4"].sharding.spec == jax.sharding.PartitionSpec(None, "tensor", "fsdp")  # row-parallel
  fresh = train.load_base(c, out["cfg"], sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1},
                                                           devices=jax.devices()[:1]))  # the base, untouched
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(out["frozen"]), jax.device_get(fresh))


def test_a_quantized_base_is_read_and_quantized_once_per_workdir(hf_dir, tmp_path, monkeypatch):
  """The stages of a run share WORKDIR/base_cache: the second load restores the quantized leaves (Orbax,
  fingerprint-checked) without reading the HF weights, and a changed weight file makes a new entry."""
  import shutil

  from hinqa_jax import train
  from train_utils import toy_config

  hf_dir = Path(shutil.copytree(hf_dir, tmp_path / "hf"))
  c = toy_config()
  c.model.hf_path, c.model.quantize, c.model.quantize_block = str(hf_dir), "nf4", 32
  cfg = train.model_config(c)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, devices=jax.devices()[:4])
  first = train.load_base(c, cfg, mesh, cache_dir=tmp_path / "base_cache")
  assert len(list((tmp_path / "base_cache").iterdir())) == 1
  real = hf.load_hf
  monkeypatch.setattr(hf, "load_hf", lambda *a, **k: pytest.fail("read the HF weights again"))
  again = train.load_base(c, cfg, mesh, cache_dir=tmp_path / "base_cache")
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(again), jax.device_get(first))
  q = again["layers"]["self_attn"]["q_proj"]["kernel_nf4"]
  assert q.sharding == first["layers"]["self_attn"]["q_proj"]["kernel_nf4"].sharding
  monkeypatch.setattr(hf, "load_hf", real)
  (hf_dir / "config.json").write_text((hf_dir / "config.json").read_text() + "\n")  # another base
  train.load_base(c, cfg, mesh, cache_dir=tmp_path / "base_cache")
  assert len(list((tmp_path / "base_cache").iterdir())) == 2
