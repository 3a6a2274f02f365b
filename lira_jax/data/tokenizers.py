"""The tokenizer a config trains and decodes with: the synthetic world's word tokenizer, or the
InternVL2 SentencePiece tokenizer of a model directory with LIRA's tokens (and [REJ]) added."""
from __future__ import annotations

from lira_jax import lira_tokens
from lira_jax.data import synthetic
from lira_jax.data.synthetic_tokenizer import world_tokenizer
from lira_jax.tokens import Tokenizer


def load_tokenizer(cfg):
  """cfg.data.kind 'synthetic' (default): the world tokenizer. Otherwise cfg.data.tokenizer_dir
  (tokenizer.model + tokenizer_config.json of the InternVL2 release); the added tokens must land
  on cfg.tokens' ids, so that the converted embeddings line up."""
  if cfg.data.get('kind', 'synthetic') == 'synthetic':
    return world_tokenizer(synthetic.vocabulary_texts(), cfg.tokens)
  if not cfg.data.get('tokenizer_dir'):
    raise ValueError('cfg.data.tokenizer_dir is empty: point it at the InternVL2 model directory')
  tokenizer = Tokenizer.from_dir(cfg.data.tokenizer_dir)
  lira_tokens.add_lira_tokens(tokenizer)
  got = lira_tokens.token_config(tokenizer)
  wrong = {k: (got.get(k), v) for k, v in cfg.tokens.items() if got.get(k) != v}
  if wrong:
    raise ValueError(f'tokenizer ids differ from cfg.tokens (got, want): {wrong}')
  return tokenizer
