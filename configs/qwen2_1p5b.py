"""InternViT-300M + mlp1 + Qwen2-1.5B (tied embeddings), the LLM option LIRA-Qwen2 builds on.

Arg 'tiny': a test-size model with the same structure.
"""
from configs import common
from configs.internvl2_1b import QWEN2, QWEN2_IMG_CONTEXT_ID


def get_config(arg=None):
  return common.internvl2_variant(
      arg,
      llm=common.llm_config(vocab_size=151936, hidden_size=1536, num_layers=28, num_heads=12,
                            num_kv_heads=2, mlp_dim=8960, max_position_embeddings=32768,
                            tie_embeddings=True, **QWEN2),
      tiny_llm=common.llm_config(vocab_size=256, hidden_size=48, num_layers=2, num_heads=3,
                                 num_kv_heads=1, head_dim=16, mlp_dim=128,
                                 max_position_embeddings=64, tie_embeddings=True, **QWEN2),
      template='Hermes-2', image_context_id=QWEN2_IMG_CONTEXT_ID)
