"""The synthetic referring world: determinism, split disjointness, expressions checked by an
independent text parser against the object attributes, occlusion, tokenizer round trip, batch
elements (shapes, label masking) and a tiny LIRA forward on a collated batch."""
import collections
import hashlib
import re

import numpy as np
import pytest

import lira_jax  # noqa: F401
from configs import common
from configs.lira_common import TINY_TOKENS
from lira_jax import lira_tokens
from lira_jax.data import synthetic as sy
from lira_jax.data.synthetic_tokenizer import world_tokenizer
from lira_jax.ilvc import strip_ilvc
from lira_jax.sequence import IGNORE_INDEX, IMAGE_TOKEN_INDEX

CFG = common.load_config('configs/lira_2b.py:tiny')
TOK = world_tokenizer(sy.vocabulary_texts(), CFG.tokens)
N = 24


def _resolve(scene, text):
  """Independent reading of an expression: the indices of the objects it denotes."""
  objs = scene.objects

  def noun(words):  # 'red circle' | 'circle' | 'red shape' | plural forms
    *colour, shape = words.split()
    shape = shape[:-1] if shape.endswith('s') else shape
    return [i for i, o in enumerate(objs) if colour in ([], [o.colour])
            and shape in ('shape', o.shape)]

  def centre(i):
    ys, xs = np.nonzero(objs[i].mask)
    return ys.mean(), xs.mean()

  if m := re.fullmatch(r'all (.+)', text):
    return noun(m.group(1))
  if m := re.fullmatch(r'the (largest|smallest) (.+)', text):
    cands = sorted(noun(m.group(2)), key=lambda i: objs[i].mask.sum())
    return cands[-1:] if m.group(1) == 'largest' else cands[:1]
  if m := re.fullmatch(r'the (.+?) (left of|right of|above|below) the (.+)', text):
    (anchor,) = noun(m.group(3))
    ay, ax = centre(anchor)
    test = {'left of': lambda y, x: x < ax, 'right of': lambda y, x: x > ax,
            'above': lambda y, x: y < ay, 'below': lambda y, x: y > ay}[m.group(2)]
    return [i for i in noun(m.group(1)) if test(*centre(i))]
  return noun(re.fullmatch(r'the (.+)', text).group(1))


@pytest.fixture(scope='module')
def samples():
  return [sy.make_sample('train', i, max_targets=2) for i in range(N)]


def test_deterministic():
  a, b = sy.make_scene(7), sy.make_scene(np.random.default_rng(7))
  np.testing.assert_array_equal(a.image, b.image)
  for s1, s2 in [(sy.make_sample('val', 3), sy.make_sample('val', 3))]:
    np.testing.assert_array_equal(s1.scene.image, s2.scene.image)
    np.testing.assert_array_equal(s1.masks, s2.masks)
    assert (s1.question, s1.answer) == (s2.question, s2.answer)


def test_splits_disjoint():
  digests = {split: {hashlib.sha1(sy.make_sample(split, i, task='vqa').scene.image.tobytes())
                     .hexdigest() for i in range(30)} for split in sy.SPLITS}
  assert all(len(d) == 30 for d in digests.values())
  assert not (digests['train'] & digests['val'] or digests['train'] & digests['test']
              or digests['val'] & digests['test'])


def test_occlusion_masks_visible_and_disjoint():
  for seed in range(10):
    scene = sy.make_scene(seed)
    masks = np.stack([o.mask for o in scene.objects]).astype(int)
    assert masks.sum(0).max() <= 1 and len(scene.objects) >= 2
    for o in scene.objects:
      assert o.mask.sum() > 0
      # Visible pixels carry the object's colour (tint ±15, noise σ 6).
      mean = scene.image[o.mask].mean(0)
      assert np.abs(mean - np.asarray(sy.COLOURS[o.colour])).max() < 20


def test_referring_expressions_resolve_to_one_object():
  for seed in range(8):
    scene = sy.make_scene(seed)
    for kind, pool in sy.referring_expressions(scene).items():
      for text, obj in pool:
        assert _resolve(scene, text) == [obj], (kind, text)


def test_expression_kind_and_shared_colour():
  kinds = set()
  for seed in range(8):
    scene = sy.make_scene(seed)
    for kind, pool in sy.referring_expressions(scene).items():
      for text, obj in pool:
        assert sy.expression_kind(text) == kind, text
        kinds.add(kind)
        colours = [o.colour for o in scene.objects]
        assert sy.shares_colour(scene, obj) == (colours.count(colours[obj]) > 1)
  assert kinds == {'attribute', 'relational', 'superlative'}


def test_multi_and_absent_expressions():
  for seed in range(8):
    scene = sy.make_scene(seed)
    for text, objs in sy.multi_target_expressions(scene):
      assert _resolve(scene, text) == objs and len(objs) >= 2
    for text in sy.absent_expressions(scene):
      assert _resolve(scene, text) == []


def test_absent_forms_match_parsing():
  """The forms _gres buckets absent expressions by are built, not parsed: they must agree with
  expression_form on every absent expression."""
  seen = set()
  for seed in range(40):
    for text, form in sy._absent_with_forms(sy.make_scene(seed, 128)):
      assert form == sy.expression_form(text), text
      seen.add(form)
  assert {kind for kind, _ in seen} == {'attribute', 'superlative', 'all', 'relational'}


def _wording(text):
  """The wording of an expression with its colour and shape words replaced by placeholders."""
  words = [('C' if w in sy.COLOURS else 'S' if w.rstrip('s') in sy.SHAPES else w)
           for w in text.split()]
  return ' '.join(words)


def test_gres_wording_does_not_tell_absent_from_present():
  """A rule that reads only the wording (the form with colours and shapes blanked out) must not
  separate no-target expressions from the others: their wording distributions are close (total
  variation < 0.15). Up to session 21 every no-target was `the C S` (variation 0.88)."""
  present, absent = collections.Counter(), collections.Counter()
  for i in range(300):
    s = sy.make_sample('val', i, task='gres', size=128, absent_rate=0.75)
    for text, target in zip(s.expressions, s.targets):
      (present if target else absent)[_wording(text)] += 1
  assert sum(absent.values()) > 100
  forms = set(present) | set(absent)
  tv = 0.5 * sum(abs(present[f] / sum(present.values()) - absent[f] / sum(absent.values()))
                 for f in forms)
  assert tv < 0.15, (tv, present.most_common(6), absent.most_common(6))
  assert {f for f in absent if f.startswith('all')} and {f for f in absent if ' of the ' in f}


def test_sample_targets_match_answers(samples):
  seen = {s.task for s in samples}
  assert {'referring', 'gres'} <= seen
  for s in samples:
    if s.task in ('referring', 'gres', 'gcg'):
      assert s.answer.count('[SEG]') + s.answer.count('[REJ]') == len(s.targets) * (
          1 if s.task == 'gres' else 2)
      for text, target, mask in zip(s.expressions, s.targets, s.masks):
        if s.task != 'gcg':
          assert _resolve(s.scene, text) == sorted(target), text
        union = np.any([s.scene.objects[i].mask for i in target], axis=0) if target else 0
        np.testing.assert_array_equal(mask, union)
      assert s.answer.count('[REJ]') == sum(not t for t in s.targets)


def test_internvl_pretraining_tasks_answer_from_the_scene():
  """caption lists every object left to right; what names the attribute its expression leaves
  out; where gives the 3 x 3 cell of the referred object's centroid (expressions resolved by the
  independent parser above)."""
  asked = set()
  for i in range(30):
    for task in ('caption', 'what', 'where'):
      s = sy.make_sample('train', i, task=task, size=128)
      objs = s.scene.objects
      assert not s.targets and s.question.startswith('<image>\n')
      if task == 'caption':
        order = np.argsort([np.nonzero(o.mask)[1].mean() for o in objs])
        assert re.findall(r'\ban? (\w+ \w+)', s.answer) == [
            f'{objs[j].colour} {objs[j].shape}' for j in order]
        continue
      question = s.question.removeprefix('<image>\n').removesuffix(sy.VQA_SUFFIX)
      kind, text = re.fullmatch(r'(What colour|What shape|Where) is (.+)\?', question).groups()
      (obj,) = _resolve(s.scene, text)
      ys, xs = np.nonzero(objs[obj].mask)
      cell = (f"{('top', 'middle', 'bottom')[int(ys.mean() * 3 / 128)]} "
              f"{('left', 'center', 'right')[int(xs.mean() * 3 / 128)]}")
      want = {'What colour': objs[obj].colour, 'What shape': objs[obj].shape, 'Where': cell}
      assert s.answer == want[kind], (question, s.answer)
      if kind != 'Where':
        assert s.answer not in text.split()
      asked.add(kind)
  assert asked == {'What colour', 'What shape', 'Where'}


def test_tokenizer_round_trip_and_ids(samples):
  assert TOK.vocab_size == CFG.model.llm.vocab_size == 207
  assert lira_tokens.token_config(TOK) == TINY_TOKENS
  assert TOK.stop_ids('internlm2-chat') == [189, 190, 2]
  for s in samples:
    for text in (s.question, s.answer, strip_ilvc(s.answer)):
      ids = TOK.encode(text, add_bos=False)
      assert max(ids) < 207 and TOK.decode(ids) == text
  assert world_tokenizer(sy.vocabulary_texts(), CFG.tokens).encode('all red circles') == \
      TOK.encode('all red circles')
  with pytest.raises(KeyError):
    TOK.encode('zebra')


@pytest.mark.parametrize('ilvc', [True, False])
def test_encode_sample(samples, ilvc):
  s_omg, s_tile = CFG.model.omg.image_size, CFG.model.vision.image_size
  for s in samples[:8]:
    e = sy.encode_sample(s, TOK, CFG, ilvc=ilvc)
    shapes = dict(pixels=(s_omg, s_omg, 3), tiles=(3, s_tile, s_tile, 3), tile_valid=(3,),
                  regions=(2, s_tile, s_tile, 3), region_valid=(2,), ids=(256,), labels=(256,),
                  text_valid=(256,), gt_masks=(4, s_omg, s_omg), gt_noun=(4, 2))
    assert {k: v.shape for k, v in e.items()} == shapes
    k = len(s.targets)
    assert (e['gt_noun'][:k] >= 0).all() and (e['gt_noun'][k:] == -1).all()
    assert e['ids'].dtype == e['labels'].dtype == np.int32 and e['pixels'].dtype == np.float32
    n = int(e['text_valid'].sum())
    ids, labels = e['ids'][:n], e['labels'][:n]
    supervised = labels != IGNORE_INDEX
    first = int(np.argmax(supervised))
    assert supervised[first:].all() and not supervised[:first].any()
    answer = s.answer if ilvc else strip_ilvc(s.answer)
    assert TOK.decode(labels[first:][labels[first:] >= 0]) == answer.replace('<image>', '') + \
        '<|im_end|>'
    assert TOK.decode(ids[:first][ids[:first] >= 0]).endswith('<|im_start|>assistant\n')
    local = int((ids == IMAGE_TOKEN_INDEX).sum()) - 1
    assert e['region_valid'].sum() == local == (len(s.targets) if ilvc and s.task in (
        'referring', 'gcg') else 0)
    assert not e['regions'][~e['region_valid']].any() and e['tile_valid'].sum() == 1
    np.testing.assert_array_equal(e['gt_masks'][:len(s.targets)], s.masks)
    assert not e['gt_masks'][len(s.targets):].any()


def test_multi_turn_referring_and_absent_rate():
  """referring_rounds asks that many different expressions in successive turns (the image only
  in the first); the ILVC encoding gives one region per turn. absent_rate 1 makes every gres
  expression after the first absent, 0 none; the streams of rounds=1 / rate 0.5 are unchanged."""
  cfg = CFG.copy_and_resolve_references()
  cfg.seq.max_regions, cfg.seq.max_seg = 3, 6
  for i in range(6):
    s = sy.make_sample('train', i, task='referring', size=128, referring_rounds=3)
    assert len(s.turns) == len(s.targets) == len(s.expressions) <= 3
    assert len(set(s.expressions)) == len(s.expressions)
    assert s.question.startswith('<image>\n')
    assert all('<image>\n' not in q for q, _ in s.followups)
    for (q, a), text, target in zip(s.turns, s.expressions, s.targets):
      assert a == lira_tokens.referring_answer(text) and text in q
      assert _resolve(s.scene, text) == list(target)
    e = sy.encode_sample(s, TOK, cfg, ilvc=True)
    assert e['region_valid'].sum() == len(s.turns)
    one = sy.make_sample('train', i, task='referring', size=128)
    assert (one.question, one.answer) == (s.question, s.answer) and not one.followups
  for i in range(12):
    always = sy.make_sample('train', i, task='gres', size=128, absent_rate=1.0)
    never = sy.make_sample('train', i, task='gres', size=128, absent_rate=0.0)
    assert sum(not t for t in always.targets) == len(always.targets) - 1
    assert all(never.targets)
    default = sy.make_sample('train', i, task='gres', size=128)
    half = sy.make_sample('train', i, task='gres', size=128, absent_rate=0.5)
    assert (default.answer, default.targets) == (half.answer, half.targets)
