"""InternVL2-2B: InternViT-300M-448px + mlp1 + internlm2-chat-1_8b. Arg 'tiny': a test-size model."""
from configs import common


def get_config(arg=None):
  if arg == 'tiny':
    return common.internvl_config(
        vision=common.vision_config(hidden_size=64, num_layers=2, num_heads=4, mlp_dim=256,
                                    image_size=112),
        projector=common.projector_config(),
        llm=common.llm_config(family='internlm2', vocab_size=200, hidden_size=64, num_layers=2,
                              num_heads=4, num_kv_heads=2, mlp_dim=176, norm_eps=1e-5,
                              rope_theta=1e6, rope_scaling={'type': 'dynamic', 'factor': 2.0},
                              max_position_embeddings=64, tie_embeddings=False),
        template='internlm2-chat', image_context_id=193)
  if arg not in (None, ''):
    raise ValueError(f'unknown config arg {arg!r} (expected none or "tiny")')
  return common.internvl_config(
      vision=common.vision_config(),
      projector=common.projector_config(),
      llm=common.llm_config(family='internlm2', vocab_size=92553, hidden_size=2048, num_layers=24,
                            num_heads=16, num_kv_heads=8, mlp_dim=8192, norm_eps=1e-5,
                            rope_theta=1e6, rope_scaling={'type': 'dynamic', 'factor': 2.0},
                            max_position_embeddings=32768, tie_embeddings=False),
      template='internlm2-chat', image_context_id=92546)
