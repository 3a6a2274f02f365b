"""What in-loop ILVC costs: generation with local images vs the same prompts and outputs without.

  python bench/ilvc.py [--config configs/tiny_synthetic.py] [--batch 8] [--new-tokens 128]
                       [--runs 3] [--ignore-load]

The model is the config's LIRA (stage 2) with a scripted LLM (lira_jax.testing.scripted_llm):
every sample writes eight words, then `[SEG] <image_id> ␣<p> red </p>`, and again, so
the token stream is known and identical with and without ILVC. With ILVC the first
cfg.seq.max_regions `<image_id>`s of each sample decode the preceding [SEG] to a mask, crop and
encode the region and append its tokens to the KV cache (lira_jax.infer.lira_generate); without,
the same compiled program runs with the per-sample switch off and `<image_id>` not stopping.
Prompts are the GCG question on synthetic val scenes; prefill included, compile excluded, median
of --runs. The last line is `ilvc_overhead: X` = time with / time without - 1.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lira_jax  # noqa: F401  (first: disables eager sharding)

import argparse
import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from configs.common import stage_config
from lira_jax.data import synthetic
from lira_jax.data.synthetic_tokenizer import world_tokenizer
from lira_jax.infer.runner import collate, generate_options, prompt_element
from lira_jax.infer.lira_generate import make_generate_fn
from lira_jax.models.lira import LIRA
from lira_jax.testing.scripted_llm import script_llm
from timing import check_load, cpu_snapshot, foreign_load, median_seconds

WORDS = ('the', 'image', 'shows', 'a', 'shape', 'and', 'all', 'there')


def script(tokenizer, cfg, prompt_last: int) -> dict[int, int]:
  """Token -> next token: the prompt's last token starts a loop of the WORDS and a grounded
  phrase (each token once: its successor is a function of it alone)."""
  t = cfg.tokens
  words = [tokenizer.encode(' ' + w, add_bos=False)[-1] for w in WORDS]
  space, red = tokenizer.encode(' ', add_bos=False)[0], tokenizer.encode(' red', add_bos=False)[-1]
  loop = [*words, t.seg, t.image_id, space, t.p_start, red, t.p_end]
  out = {prompt_last: loop[0]}
  out.update({a: b for a, b in zip(loop, loop[1:] + loop[:1])})
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='configs/tiny_synthetic.py')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--new-tokens', type=int, default=128)
  parser.add_argument('--runs', type=int, default=3)
  parser.add_argument('--ignore-load', action='store_true')
  args = parser.parse_args()

  cfg = stage_config(args.config, 2)
  tokenizer = world_tokenizer(synthetic.vocabulary_texts(), cfg.tokens)
  elements = [prompt_element(Image.fromarray(synthetic.make_sample('val', i, size=128).scene.image),
                             [(synthetic.IMAGE_PLACEHOLDER + '\n' + synthetic.GCG_QUESTION, None)],
                             tokenizer, cfg, system_message=synthetic.SYSTEM_MESSAGE)
              for i in range(args.batch)]
  batch = {k: jnp.asarray(v) for k, v in collate(elements, cfg.seq.max_len).items()}
  model = nnx.jit(lambda: LIRA(cfg, rngs=nnx.Rngs(0)))()
  script_llm(model.llm, script(tokenizer, cfg, int(elements[0]['ids'][-1])))
  model.eval()
  graphdef, state = nnx.split(model)
  # Without ILVC, <image_id> is generated through instead of stopping: the same tokens.
  opts = dataclasses.replace(generate_options(cfg, tokenizer, max_new_tokens=args.new_tokens),
                             ilvc_off_stops=False)
  fn = make_generate_fn(graphdef, opts)

  def run(ilvc: bool):
    out = fn((state,), dict(batch, ilvc=jnp.full((args.batch,), ilvc)), jax.random.key(0))
    return jax.device_get(jax.block_until_ready(out))

  start = cpu_snapshot()
  time.sleep(1.0)
  check_load(foreign_load(start), 'before the benchmark', args.ignore_load)
  start = cpu_snapshot()
  on_s, on = median_seconds(functools.partial(run, True), args.runs)
  off_s, off = median_seconds(functools.partial(run, False), args.runs)
  check_load(foreign_load(start), 'during the benchmark', args.ignore_load)
  same = np.array_equal(on['tokens'], off['tokens'])
  print(f'batch {args.batch}, {args.new_tokens} new tokens, regions per sample '
        f'{on["regions"].tolist()} with ILVC, {off["regions"].tolist()} without; '
        f'same tokens: {same}')
  if not same or not on['regions'].all():
    sys.exit('FAIL: the two runs must produce the same tokens, with ILVC regions in every sample')
  print(f'with ILVC {on_s:.3f} s, without {off_s:.3f} s (median of {args.runs})')
  print(f'ilvc_overhead: {on_s / off_s - 1:.3f}')


if __name__ == '__main__':
  main()
