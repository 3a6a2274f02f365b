"""InternVL2-1B: InternViT-300M-448px + mlp1 + Qwen2-0.5B-Instruct (untied head, vocab 151655).

Arg 'tiny': a test-size model with the same structure.
"""
from configs import common

# <IMG_CONTEXT> in the InternVL2 Qwen2 vocabulary: 151643 base + 3 chat tokens + <img>, </img>
# [inferred from the 9 added InternVL tokens; the converter reads the id from the checkpoint].
QWEN2_IMG_CONTEXT_ID = 151648
QWEN2 = dict(family='qwen2', norm_eps=1e-6, rope_theta=1e6)


def get_config(arg=None):
  return common.internvl2_variant(
      arg,
      llm=common.llm_config(vocab_size=151655, hidden_size=896, num_layers=24, num_heads=14,
                            num_kv_heads=2, mlp_dim=4864, max_position_embeddings=32768,
                            tie_embeddings=False, **QWEN2),
      tiny_llm=common.llm_config(vocab_size=200, hidden_size=56, num_layers=2, num_heads=7,
                                 num_kv_heads=1, mlp_dim=152, max_position_embeddings=64,
                                 tie_embeddings=False, **QWEN2),
      template='Hermes-2', image_context_id=QWEN2_IMG_CONTEXT_ID)
