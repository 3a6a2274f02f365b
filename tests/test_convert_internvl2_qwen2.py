"""A Qwen2-based InternVL2 checkpoint (InternVL2-1B layout) built from transformers' Qwen2ForCausalLM:
convert with the strict converter and verify the text path against transformers' own logits."""
import json
import pathlib
import shutil

import numpy as np
import pytest
import torch
import transformers

import lira_jax  # noqa: F401
from convert import cli, internvl2
from convert.safetensors_io import CheckpointReader, write_safetensors


def _qwen2_internvl_dir(golden: pathlib.Path, dst: pathlib.Path, *, tied: bool):
  torch.manual_seed(0)
  cfg = transformers.Qwen2Config(
      vocab_size=200, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6,
      rope_theta=1e6, tie_word_embeddings=tied, attn_implementation='eager')
  ref = transformers.Qwen2ForCausalLM(cfg).eval()
  with torch.no_grad():
    for name, p in ref.named_parameters():
      if name.endswith('norm.weight'):
        p.normal_(1.0, 0.2)
      elif name.endswith('bias'):
        p.normal_(0.0, 0.1)
  dst.mkdir()
  raw = json.loads((golden / 'config.json').read_text())
  raw['template'] = 'Hermes-2'
  raw['llm_config'] = dict(
      architectures=['Qwen2ForCausalLM'], model_type='qwen2', hidden_size=64,
      intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
      max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=1e6, vocab_size=200,
      tie_word_embeddings=tied, rope_scaling=None)
  (dst / 'config.json').write_text(json.dumps(raw))
  shutil.copy(golden / 'special_tokens.json', dst / 'special_tokens.json')
  vision = CheckpointReader(golden / 'model.safetensors')
  tensors = {k: np.array(vision.get(k)) for k in vision.keys() if not k.startswith('language_model')}
  for k, v in ref.state_dict().items():
    if tied and k == 'lm_head.weight':
      continue  # a tied release omits the head
    tensors['language_model.' + k] = v.numpy()
  write_safetensors(dst / 'model.safetensors', tensors)
  ids = torch.randint(0, 200, (1, 80))
  with torch.no_grad():
    out = ref(input_ids=ids, output_hidden_states=True)
  np.savez(dst / 'inputs.npz', long_input_ids=ids.numpy(), long_attention_mask=np.ones((1, 80)))
  np.savez(dst / 'outputs.npz', long_logits=out.logits.numpy(),
           long_last_hidden_state=out.hidden_states[-1].numpy())


@pytest.mark.parametrize('tied', [False, True])
def test_qwen2_internvl_converts_and_matches_transformers(shared_dir, tmp_path, tied):
  golden = pathlib.Path(shared_dir) / 'golden' / 'internvl2_tiny'
  src = tmp_path / 'src'
  _qwen2_internvl_dir(golden, src, tied=tied)
  params, cfg = cli.convert(internvl2.FAMILY, src, tmp_path / 'out')
  assert cfg.model.llm.family == 'qwen2' and cfg.model.llm.tie_embeddings == tied
  assert ('llm.lm_head.kernel' in params) == (not tied)
  errors = internvl2.verify(params, cfg, src)
  assert set(errors) == {'long_logits', 'long_last_hidden_state'}
  for name, (abs_err, _) in errors.items():
    assert abs_err <= 1e-4, (name, abs_err)
