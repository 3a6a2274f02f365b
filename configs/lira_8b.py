"""LIRA-8B: InternVL2-8B + OMG-Seg ConvNeXt-L + SEFE; LoRA r=256, alpha=512 in stage 2.

Arg: comma list of 'tiny' and 'stage1'/'stage2' (default stage2), e.g. 'tiny,stage1'.
"""
from configs import internvl2_8b, lira_common


def get_config(arg=None):
  tiny, stage = lira_common.parse_arg(arg)
  base = internvl2_8b.get_config('tiny' if tiny else None)
  return lira_common.lira_config(base, tiny=tiny, stage=stage, lora_rank=8 if tiny else 256,
                                 lora_alpha=16 if tiny else 512)
