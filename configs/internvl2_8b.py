"""InternVL2-8B: InternViT-300M-448px + mlp1 + internlm2_5-7b-chat. Arg 'tiny': a test-size model."""
from configs import common
from configs.internvl2_2b import INTERNLM2


def get_config(arg=None):
  return common.internvl2_variant(
      arg,
      llm=common.llm_config(vocab_size=92553, hidden_size=4096, num_layers=32, num_heads=32,
                            num_kv_heads=8, mlp_dim=14336, max_position_embeddings=32768,
                            **INTERNLM2),
      tiny_llm=common.llm_config(vocab_size=200, hidden_size=128, num_layers=2, num_heads=8,
                                 num_kv_heads=2, mlp_dim=352, max_position_embeddings=64,
                                 **INTERNLM2),
      template='internlm2-chat', image_context_id=92546)
