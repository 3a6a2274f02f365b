"""InternViT-300M + mlp1 + Qwen2-1.5B (tied embeddings), the LLM option LIRA-Qwen2 builds on.

Arg 'tiny': a test-size model with the same structure.
"""
from configs import common
from configs.internvl2_1b import QWEN2_IMG_CONTEXT_ID


def get_config(arg=None):
  if arg == 'tiny':
    return common.internvl_config(
        vision=common.vision_config(hidden_size=64, num_layers=2, num_heads=4, mlp_dim=256,
                                    image_size=112),
        projector=common.projector_config(),
        llm=common.llm_config(family='qwen2', vocab_size=256, hidden_size=48, num_layers=2,
                              num_heads=3, num_kv_heads=1, head_dim=16, mlp_dim=128,
                              norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=64,
                              tie_embeddings=True),
        template='Hermes-2', image_context_id=193)
  if arg not in (None, ''):
    raise ValueError(f'unknown config arg {arg!r} (expected none or "tiny")')
  return common.internvl_config(
      vision=common.vision_config(),
      projector=common.projector_config(),
      llm=common.llm_config(family='qwen2', vocab_size=151936, hidden_size=1536, num_layers=28,
                            num_heads=12, num_kv_heads=2, mlp_dim=8960, norm_eps=1e-6,
                            rope_theta=1e6, max_position_embeddings=32768, tie_embeddings=True),
      template='Hermes-2', image_context_id=QWEN2_IMG_CONTEXT_ID)
