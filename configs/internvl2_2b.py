"""InternVL2-2B: InternViT-300M-448px + mlp1 + internlm2-chat-1_8b. Arg 'tiny': a test-size model."""
from configs import common

INTERNLM2 = dict(family='internlm2', norm_eps=1e-5, rope_theta=1e6, tie_embeddings=False,
                 rope_scaling={'type': 'dynamic', 'factor': 2.0})


def get_config(arg=None):
  return common.internvl2_variant(
      arg,
      llm=common.llm_config(vocab_size=92553, hidden_size=2048, num_layers=24, num_heads=16,
                            num_kv_heads=8, mlp_dim=8192, max_position_embeddings=32768,
                            **INTERNLM2),
      tiny_llm=common.llm_config(vocab_size=200, hidden_size=64, num_layers=2, num_heads=4,
                                 num_kv_heads=2, mlp_dim=176, max_position_embeddings=64,
                                 **INTERNLM2),
      template='internlm2-chat', image_context_id=92546)
