"""Generation-based evaluation on a synthetic-world split: every benchmark of the paper's tables
on its synthetic counterpart, decoded with the compiled batched generator (lira_jax.infer), scored
with the host metric modules. Greedy decoding: results do not depend on the batch size.

  res         referring expressions, one per prompt, ILVC off (the released RefCOCO protocol):
              mask of the first [SEG]; cIoU / gIoU (LISA convention)
  gres_rej    GSVA prompts listing 1-2 expressions (present or absent): the k-th [SEG] / [REJ]
              of the answer is expression k's; ReLA's cIoU / gIoU / N-acc / T-acc / Pr@X
  gres_first  the same expressions one per prompt (LIRA's first-[SEG] protocol): no target when
              no [SEG] comes or its mask is empty
  gcg         grounded captions with ILVC: METEOR / CIDEr (pycocoevalcap), mask AP50 (COCOeval)
              and greedy-matched mIoU against the grounded objects
  chair       CHAIR_S / CHAIR_I of those captions (objects = shape words) over the frozen id list
  vqa         colour / shape / count questions: VQAv2 soft accuracy (the answer x10 as humans)
  pope        "Is there a <colour> <shape> in the image?": accuracy / F1 / yes-ratio
  attr        AttrEval: Acc_1 / Acc_3 of the target's colour word among the [SEG] logits of the
              referring prompts, and paired yes/no accuracy (a present and an absent
              colour-shape pair per image)

Sample ids: benchmark b uses split samples OFFSETS[b] + i, i < count, so benchmarks never share
a scene. Outputs: metrics JSON and one JSONL line per prompt (prediction, RLE masks, IoU, flags).
"""
from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np
from PIL import Image

from lira_jax import lira_tokens
from lira_jax.data import synthetic
from lira_jax.eval import attr_eval, chair, gcg_metrics, pope, seg_metrics, vqa_metrics
from lira_jax.infer.runner import Runner, prompt_element

OFFSETS = dict(res=0, gres=100_000, gcg=200_000, vqa=300_000, pope=400_000, attr=500_000)
SYNONYMS = {s: [s + 's'] for s in synthetic.SHAPES}  # CHAIR node words: the shapes


def _sample(cfg, bench: str, i: int, task: str) -> synthetic.Sample:
  d = cfg.data
  return synthetic.make_sample(cfg.eval.split, OFFSETS[bench] + i, task=task, size=d.image_size,
                               max_targets=d.max_targets, world_seed=d.world_seed)


def _prompt(runner: Runner, sample: synthetic.Sample, question: str, ilvc: bool) -> dict:
  return prompt_element(Image.fromarray(sample.scene.image), [(question, None)],
                        runner.tokenizer, runner.cfg, ilvc=ilvc,
                        system_message=synthetic.SYSTEM_MESSAGE)


def _with_image(question: str) -> str:
  return synthetic.IMAGE_PLACEHOLDER + '\n' + question


def _iou_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
  return float((pred & gt).sum()), float((pred | gt).sum())


def _record(bench, sid, result, **extra) -> dict:
  return dict(benchmark=bench, sample=sid, prediction=result.text,
              targets=[dict(phrase=t.phrase, rejected=t.rejected) for t in result.targets],
              masks=[gcg_metrics.encode_rle(m) for m in result.masks], **extra)


def run_res(runner, count, records):
  samples = [_sample(runner.cfg, 'res', i, 'referring') for i in range(count)]
  results = runner.run([_prompt(runner, s, s.question, ilvc=False) for s in samples])
  meter = seg_metrics.ResMeter()
  for i, (s, r) in enumerate(zip(samples, results)):
    has = bool(r.targets) and not r.targets[0].rejected
    inter, union = _iou_counts(r.masks[0], s.masks[0]) if has else (0.0, 0.0)
    meter.add([inter], [union], [has])
    records.append(_record('res', i, r, expression=s.expressions[0], has_seg=has,
                           iou=inter / union if union else 0.0))
  m = meter.metrics()
  return dict(res_ciou=m['ciou'], res_giou=m['giou'], res_count=m['count'])


def _gres_metrics(prefix: str, meter: seg_metrics.GresMeter) -> dict:
  g = meter.metrics()
  return {f'{prefix}_{k.replace("@", "_at_")}': v for k, v in g.items()}


def run_gres(runner, count, records):
  samples = [_sample(runner.cfg, 'gres', i, 'gres') for i in range(count)]
  rej, first = seg_metrics.GresMeter('rela'), seg_metrics.GresMeter('rela')
  results = runner.run([_prompt(runner, s, s.question, ilvc=False) for s in samples])
  singles = [(s, k) for s in samples for k in range(len(s.expressions))]
  single_results = runner.run([
      _prompt(runner, s, _with_image(lira_tokens.referring_question(s.expressions[k])), False)
      for s, k in singles])
  for i, (s, r) in enumerate(zip(samples, results)):
    for k, gt in enumerate(s.masks):
      got = k < len(r.targets) and not r.targets[k].rejected
      inter, union = _iou_counts(r.masks[k], gt) if got else (0.0, float(gt.sum()))
      rej.add([inter], [union], [not gt.any()], [not got])
    records.append(_record('gres_rej', i, r, expressions=list(s.expressions),
                           gt_empty=[not m.any() for m in s.masks]))
  for j, ((s, k), r) in enumerate(zip(singles, single_results)):
    gt = s.masks[k]
    mask = r.masks[0] if r.targets and not r.targets[0].rejected else np.zeros_like(gt)
    inter, union = _iou_counts(mask, gt)
    first.add([inter], [union], [not gt.any()], [not mask.any()])
    records.append(_record('gres_first', j, r, expression=s.expressions[k],
                           gt_empty=not gt.any()))
  return {**_gres_metrics('gres_rej', rej), **_gres_metrics('gres_first', first)}


def run_gcg(runner, count, records, caption_metrics):
  samples = [_sample(runner.cfg, 'gcg', i, 'gcg') for i in range(count)]
  results = runner.run([_prompt(runner, s, s.question, ilvc=True) for s in samples])
  refs, cands, gt_rles, pred_rles, gt_objects = {}, {}, {}, {}, {}
  for i, (s, r) in enumerate(zip(samples, results)):
    refs[i] = [gcg_metrics.clean_gcg_answer(s.answer)[0]]
    cands[i] = gcg_metrics.clean_gcg_answer(r.text)[0]
    gt_rles[i] = [gcg_metrics.encode_rle(m) for m in s.masks]
    pred_rles[i] = [gcg_metrics.encode_rle(m) for m, t in zip(r.masks, r.targets)
                    if not t.rejected]
    gt_objects[i] = {o.shape for o in s.scene.objects}
    records.append(_record('gcg', i, r, reference=refs[i][0]))
  out = {f'gcg_{k.lower()}': v for k, v in gcg_metrics.caption_scores(
      refs, cands, metrics=caption_metrics, tokenize=False).items()}
  out.update(gcg_ap50=gcg_metrics.mask_ap50(gt_rles, pred_rles),
             gcg_miou=gcg_metrics.mask_miou(gt_rles, pred_rles))
  c = chair.chair_for_images(list(cands), cands, gt_objects, SYNONYMS)
  out.update(chair_s=c['chair_s'], chair_i=c['chair_i'], chair_recall=c['recall'])
  return out


def run_vqa(runner, count, records):
  samples = [_sample(runner.cfg, 'vqa', i, 'vqa') for i in range(count)]
  results = runner.run([_prompt(runner, s, s.question, ilvc=False) for s in samples])
  answers = [r.text for r in results]
  for i, (s, r) in enumerate(zip(samples, results)):
    records.append(_record('vqa', i, r, answer=s.answer))
  return dict(vqa_accuracy=vqa_metrics.vqa_accuracy(answers, [[s.answer] * 10 for s in samples]))


def run_pope(runner, count, records):
  samples = [_sample(runner.cfg, 'pope', i, 'attr') for i in range(count)]
  results = runner.run([_prompt(runner, s, s.question, ilvc=False) for s in samples])
  for i, (s, r) in enumerate(zip(samples, results)):
    records.append(_record('pope', i, r, answer=s.answer))
  m = pope.pope_metrics([r.text for r in results], [s.answer for s in samples])
  return {f'pope_{k}': v for k, v in m.items()}


def _attr_pair(s: synthetic.Sample) -> list[tuple[str, str]]:
  """A present and an absent colour-shape question about the target object."""
  obj = s.scene.objects[s.targets[0][0]]
  absent = [c for c in synthetic.COLOURS if not synthetic._matches(s.scene, c, obj.shape)]
  ask = lambda c: _with_image(f'Is there {synthetic._indefinite(f"{c} {obj.shape}")} in the '
                              f'image?{synthetic.VQA_SUFFIX}')
  return [(ask(obj.colour), 'yes'), (ask(absent[0]), 'no')] if absent else []


def run_attr(runner, count, records):
  samples = [_sample(runner.cfg, 'attr', i, 'referring') for i in range(count)]
  results = runner.run([_prompt(runner, s, s.question, ilvc=False) for s in samples])
  logits, colours = [], []
  for s, r in zip(samples, results):
    if r.targets and not r.targets[0].rejected:
      logits.append(r.seg_logits[0])
      colour = s.scene.objects[s.targets[0][0]].colour
      colours.append(runner.tokenizer.encode(' ' + colour, add_bos=False)[-1])
  vocab = int(runner.cfg.model.llm.vocab_size)
  acc = attr_eval.topk_accuracy(np.asarray(logits, np.float32).reshape(len(logits), vocab),
                                np.asarray(colours, np.int64))
  pairs = [q for s in samples for q in _attr_pair(s)]
  pair_results = runner.run([_prompt(runner, s, q, ilvc=False)
                             for s in samples for q, _ in _attr_pair(s)])
  for i, ((q, a), r) in enumerate(zip(pairs, pair_results)):
    records.append(_record('attr_yes_no', i, r, question=q, answer=a))
  paired = attr_eval.paired_accuracy([r.text for r in pair_results], [a for _, a in pairs])
  return dict(attr_acc1=acc['acc_1'], attr_acc3=acc['acc_3'], attr_probed=len(logits),
              attr_paired=paired)


RUNNERS: dict[str, Callable] = dict(res=run_res, gres=run_gres, gcg=run_gcg, vqa=run_vqa,
                                    pope=run_pope, attr=run_attr)


def evaluate(runner: Runner, counts: dict[str, int], out_dir: str | None = None, *,
             caption_metrics=('METEOR', 'CIDEr'), log=print) -> dict:
  """Runs the benchmarks with counts[name] > 0 (names of RUNNERS); writes metrics.json and
  samples.jsonl to out_dir when given. Returns the metrics."""
  metrics, records = {}, []
  for name, fn in RUNNERS.items():
    if counts.get(name, 0) <= 0:
      continue
    extra = dict(caption_metrics=caption_metrics) if name == 'gcg' else {}
    got = fn(runner, counts[name], records, **extra)
    log(f'  {name}: ' + ', '.join(f'{k} {v:.4g}' for k, v in got.items()))
    metrics.update(got)
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'metrics.json'), 'w') as f:
      json.dump(metrics, f, indent=1)
    with open(os.path.join(out_dir, 'samples.jsonl'), 'w') as f:
      for r in records:
        f.write(json.dumps(r) + '\n')
  return metrics
