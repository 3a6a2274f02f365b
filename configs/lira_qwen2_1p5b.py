"""LIRA with a Qwen2-1.5B LLM (tied embeddings) on InternViT-300M + OMG-Seg ConvNeXt-L + SEFE.
No released checkpoint: sizes follow LIRA-2B (LoRA r=128, alpha=256); the special tokens are
appended after the Qwen2 vocabulary.

Arg: comma list of 'tiny' and 'stage1'/'stage2' (default stage2).
"""
import ml_collections

from configs import lira_common, qwen2_1p5b


def get_config(arg=None):
  tiny, stage = lira_common.parse_arg(arg)
  base = qwen2_1p5b.get_config('tiny' if tiny else None)
  c = lira_common.lira_config(base, tiny=tiny, stage=stage, lora_rank=8 if tiny else 128,
                              lora_alpha=16 if tiny else 256)
  if not tiny:
    first = 151936  # appended after Qwen2's 151936 rows: [SEG] <p> </p> <region> <mark> <image_id> [REJ]
    names = ('seg', 'p_start', 'p_end', 'region', 'mark', 'image_id', 'rej')
    c.tokens = ml_collections.ConfigDict(dict(
        {n: first + i for i, n in enumerate(names)}, im_end=151645, im_start=151644,
        bos=151643, eos=151645))
    c.model.llm.vocab_size = first + len(names)
  else:
    c.model.llm.vocab_size = max(c.model.llm.vocab_size, max(c.tokens.values()) + 1)
  return c
