"""LIRA-2B: InternVL2-2B + OMG-Seg ConvNeXt-L + SEFE; LoRA r=128, alpha=256 in stage 2.

Arg: comma list of 'tiny' and 'stage1'/'stage2' (default stage2), e.g. 'tiny,stage1'.
"""
from configs import internvl2_2b, lira_common


def get_config(arg=None):
  tiny, stage = lira_common.parse_arg(arg)
  base = internvl2_2b.get_config('tiny' if tiny else None)
  return lira_common.lira_config(base, tiny=tiny, stage=stage, lora_rank=8 if tiny else 128,
                                 lora_alpha=16 if tiny else 256)
