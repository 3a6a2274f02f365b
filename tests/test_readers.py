"""Dataset readers on small fixtures written here in the real file formats (evaluation.md §2.8):
exact answer strings, mask pixel counts and boxes from known polygons / RLEs, [REJ] for
no-target expressions, union masks, a corrupt image and a corrupt annotation skipped and counted.
"""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

import lira_jax  # noqa: F401  (project convention: imported first everywhere)
from lira_jax import lira_tokens, rej
from lira_jax.data.readers import attr_from_refs, eval_files
from lira_jax.data.readers.coco_refs import RefCOCO
from lira_jax.data.readers.example import load_image
from lira_jax.data.readers.gcg import GCG_QUESTIONS, GCGSource
from lira_jax.data.readers.grefcoco import GRefCOCO
from lira_jax.data.readers.llava import LLaVA
from lira_jax.data.readers.mixture import SkippingSource
from lira_jax.eval.gcg_metrics import decode_rle, encode_rle

H, W = 16, 20
# Axis-aligned integer rectangles rasterise to exactly their (x1 - x0) * (y1 - y0) pixels.
MAN = [2, 3, 8, 3, 8, 9, 2, 9]  # 6 x 6 = 36 px, box [2, 3, 6, 6]
CAR = [[10, 1, 14, 1, 14, 4, 10, 4], [15, 10, 18, 10, 18, 12, 15, 12]]  # 12 + 6 = 18 px


def _box(y0, y1, x0, x1) -> np.ndarray:
  m = np.zeros((H, W), bool)
  m[y0:y1, x0:x1] = True
  return m


CROWD = _box(5, 10, 4, 10)  # 30 px, stored as an uncompressed RLE (iscrowd)
STRIP = _box(0, 2, 0, 20)  # 40 px, stored as a compressed RLE


def _uncompressed_rle(mask: np.ndarray) -> dict:
  """COCO's iscrowd form: run lengths over the column-major pixels, starting with zeros."""
  flat = mask.flatten(order='F')
  edges = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
  bounds = np.concatenate([[0], edges, [flat.size]])
  counts = np.diff(bounds).tolist()
  return {'size': [H, W], 'counts': ([0] + counts) if flat[0] else counts}


def _area(rle) -> int:
  return int(decode_rle(rle).sum())


def _ref(ref_id, image_id, ann_id, cat, split, sents):
  return dict(ref_id=ref_id, image_id=image_id, ann_id=ann_id, category_id=cat, split=split,
              file_name=f'COCO_train2014_{image_id:012d}_{ann_id}.jpg',
              sent_ids=list(range(ref_id * 10, ref_id * 10 + len(sents))),
              sentences=[dict(sent=s, raw=s, tokens=s.split(), sent_id=ref_id * 10 + i)
                         for i, s in enumerate(sents)])


@pytest.fixture
def data(tmp_path):
  """images/ (img1.jpg, img2.png, broken.jpg: a truncated JPEG), instances.json, refs(unc).p,
  grefs(unc).json."""
  images = tmp_path / 'images'
  images.mkdir()
  rng = np.random.default_rng(0)
  for name in ('img1.jpg', 'img2.png', 'full.jpg'):
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(images / name)
  raw = (images / 'full.jpg').read_bytes()
  (images / 'broken.jpg').write_bytes(raw[:len(raw) // 2])
  instances = dict(
      images=[dict(id=i, file_name=f, height=H, width=W)
              for i, f in ((1, 'img1.jpg'), (2, 'img2.png'), (3, 'broken.jpg'))],
      categories=[dict(id=1, name='person'), dict(id=2, name='car'), dict(id=3, name='dog')],
      annotations=[
          dict(id=10, image_id=1, category_id=1, segmentation=[MAN], iscrowd=0),
          dict(id=11, image_id=1, category_id=2, segmentation=CAR, iscrowd=0),
          dict(id=12, image_id=2, category_id=2, segmentation=_uncompressed_rle(CROWD),
               iscrowd=1),
          dict(id=13, image_id=2, category_id=1, segmentation=encode_rle(STRIP), iscrowd=0),
          dict(id=14, image_id=1, category_id=3, segmentation=[[1, 2, 3]], iscrowd=0),  # corrupt
          dict(id=15, image_id=3, category_id=1, segmentation=[MAN], iscrowd=0),
      ])
  (tmp_path / 'instances.json').write_text(json.dumps(instances))
  refs = [
      _ref(100, 1, 10, 1, 'train', ['man in red shirt', 'person on the left', 'the guy']),
      _ref(101, 1, 11, 2, 'train', ['Blue car on right']),
      _ref(102, 2, 12, 2, 'val', ['crowd of cars', 'grey car in the middle']),
      _ref(103, 2, 13, 1, 'val', ['top strip']),
      _ref(104, 1, 14, 3, 'train', ['dog']),
      _ref(105, 3, 15, 1, 'train', ['thing in broken image']),
  ]
  with open(tmp_path / 'refs(unc).p', 'wb') as f:
    pickle.dump(refs, f)
  grefs = [
      _ref(200, 1, [10, 11], [1, 2], 'train', ['Both things.']),
      _ref(201, 1, [-1], [-1], 'train', ['the dog', 'a cat']),
      _ref(202, 1, [10], [1], 'train', ['left man']),
      _ref(203, 2, [-1], [-1], 'train', ['a unicorn']),
      _ref(204, 2, [12], [2], 'val', ['the crowd']),
      _ref(205, 2, [-1], [-1], 'val', ['a horse']),
  ]
  for g in grefs:
    g['no_target'] = g['ann_id'] == [-1]
  (tmp_path / 'grefs(unc).json').write_text(json.dumps(grefs))
  return tmp_path


def _refcoco(d, split, **kw):
  return RefCOCO(str(d / 'refs(unc).p'), str(d / 'instances.json'), str(d / 'images'), split,
                 **kw)


def test_refcoco_sentences_answers_and_polygon_masks(data):
  src = _refcoco(data, 'train')
  assert len(src) == 6  # 3 + 1 + 1 + 1 sentences
  ex = src[0]
  assert ex.turns == (('<image>\nPlease segment man in red shirt.',
                       '[SEG]<image_id><image> <p> man in red shirt </p> [SEG].'),)
  assert ex.image_path == str(data / 'images' / 'img1.jpg')
  assert ex.id == '100/1000' and ex.meta['category'] == 'person'
  (rle,) = ex.masks
  assert rle['size'] == [H, W] and _area(rle) == 36
  assert mask_utils.toBbox(rle).tolist() == [2, 3, 6, 6]
  car = src[3]  # two polygons of one annotation
  assert car.turns[0] == (lira_tokens.IMAGE_PLACEHOLDER + '\n'
                          + lira_tokens.referring_question('Blue car on right'),
                          lira_tokens.referring_answer('Blue car on right'))
  assert 'blue car on right' in car.turns[0][1] and _area(car.masks[0]) == 18


def test_refcoco_rle_segmentations(data):
  src = _refcoco(data, 'val')
  assert [ex.meta['expression'] for ex in src] == ['crowd of cars', 'grey car in the middle',
                                                  'top strip']
  np.testing.assert_array_equal(decode_rle(src[0].masks[0]), CROWD)  # uncompressed RLE
  np.testing.assert_array_equal(decode_rle(src[2].masks[0]), STRIP)  # compressed RLE


def test_refcoco_per_ref_is_seeded(data):
  a, b = _refcoco(data, 'train', per='ref', seed=3), _refcoco(data, 'train', per='ref', seed=3)
  assert len(a) == 4
  assert [a[i] for i in range(2)] == [b[i] for i in range(2)]
  picks = {_refcoco(data, 'train', per='ref', seed=s)[0].meta['expression'] for s in range(12)}
  assert len(picks) > 1 and picks <= {'man in red shirt', 'person on the left', 'the guy'}


def _with_pixels(ex):
  return ex, load_image(ex.image_path)


def test_corrupt_annotation_and_image_are_skipped_and_counted(data):
  src = _refcoco(data, 'train')
  with pytest.raises(ValueError, match='degenerate polygon'):
    src[4]
  with pytest.raises(OSError, match='broken.jpg'):
    load_image(src[5].image_path)
  safe = SkippingSource(src, transform=_with_pixels)
  got = [safe[i][0].id for i in range(len(safe))]
  # 4 (bad annotation) and 5 (truncated image) fall through to the next good record, cyclically.
  assert got == ['100/1000', '100/1001', '100/1002', '101/1010', '100/1000', '100/1000']
  assert safe[0][1].shape == (H, W, 3)
  assert safe.stats == dict(skipped=3, bad_records=[4, 5], errors={'ValueError': 1, 'OSError': 2})


def _gref(d, split, **kw):
  return GRefCOCO(str(d / 'grefs(unc).json'), str(d / 'instances.json'), str(d / 'images'),
                  split, **kw)


def test_grefcoco_train_conversation(data):
  src = _gref(data, 'train', samples_per_image=3, seed=1)
  assert len(src) == 1  # image 2 has only a no-target expression in train
  ex = src[0]
  texts = ex.meta['expressions']
  present = [m.any() for m in map(decode_rle, ex.masks)]
  assert len(texts) == 3 and ex.meta['present'] == present and any(present)
  question, answer = ex.turns[0]
  assert question in {rej.gres_question(texts, c) for c in range(len(rej.GRES_QUESTIONS))}
  targets = list(zip(map(rej.clean_expression, texts), present))
  assert answer in {lira_tokens.gres_answer(targets, c) for c in range(5)}
  assert rej.parse_targets(answer) == present
  areas = dict(zip(texts, map(_area, ex.masks)))
  expected = {'Both things.': 54, 'left man': 36, 'the dog': 0, 'a cat': 0}  # 54: union
  assert areas == {t: expected[t] for t in texts}
  assert src[0] == _gref(data, 'train', samples_per_image=3, seed=1)[0]


def test_grefcoco_train_always_has_a_target(data):
  # Half the pooled sentences have no target: a one-expression sample often draws one, and is
  # then given a target-bearing expression instead (GSVA would redraw the image).
  answers = set()
  for seed in range(16):
    ex = _gref(data, 'train', samples_per_image=1, seed=seed)[0]
    assert ex.meta['present'] == [True] and rej.parse_targets(ex.turns[0][1]) == [True]
    answers.add(ex.turns[0][1])
  assert len(answers) > 1


def test_grefcoco_eval_unit_is_teacher_forced_per_image(data):
  src = _gref(data, 'train', mode='eval')
  assert len(src) == 2
  question, answer = src[0].turns[0]
  assert question == ('<image>\n What are both things, the dog, a cat, left manin this image? '
                      'Please output segmentation masks.')
  assert answer == 'Sure,both things:[SEG], the dog:[REJ], a cat:[REJ], left man:[SEG].'
  assert [_area(m) for m in src[0].masks] == [54, 0, 0, 36]
  assert src[1].turns[0][1] == 'Sure,a unicorn:[REJ].'


def test_grefcoco_single_expressions(data):
  src = _gref(data, 'val', mode='expression')
  present, absent = src[0], src[1]
  assert present.turns[0] == ('<image>\nPlease segment the crowd.',
                              lira_tokens.referring_answer('the crowd'))
  np.testing.assert_array_equal(decode_rle(present.masks[0]), CROWD)
  assert absent.turns[0] == ('<image>\nPlease segment a horse.', 'Sure,a horse:[REJ].')
  assert absent.masks[0]['size'] == [H, W] and _area(absent.masks[0]) == 0


def test_grandf_gcg(data):
  caption = 'A man stands next to a red car.'
  car = caption.index('a red car')
  man = encode_rle(_box(3, 9, 2, 8))
  record = dict(file_name='img1.jpg', height=H, width=W, image_id='sa_1', caption=caption,
                groundings={
                    'a red car': dict(token_positives=[car, car + 9],
                                      rle_masks=[encode_rle(CROWD), encode_rle(STRIP)]),
                    'A man': dict(token_positives=[0, 5], rle_masks=[man]),
                    'man': dict(token_positives=[2, 5], rle_masks=[man]),  # overlaps: dropped
                    'nothing': None})
  empty = dict(record, groundings={'x': None})
  (data / 'gcg.json').write_text(json.dumps([record, empty]))
  src = GCGSource(str(data / 'gcg.json'), str(data / 'images'), seed=0)
  ex = src[0]
  question, answer = ex.turns[0]
  assert question[len('<image>\n'):] in GCG_QUESTIONS and question.startswith('<image>\n')
  assert answer == ('[SEG]<image_id><image> <p> A man </p> [SEG] stands next to '
                    '[SEG]<image_id><image> <p> a red car </p> [SEG].')
  assert answer == lira_tokens.gcg_answer(caption, [(0, 5), (car, car + 9)])
  assert ex.meta['phrases'] == ['A man', 'a red car'] and ex.meta['image_id'] == 'sa_1'
  assert [_area(m) for m in ex.masks] == [36, 70]  # 30 + 40: OR of two RLEs
  with pytest.raises(ValueError, match='no usable grounded phrase'):
    src[1]


def test_refcocog_gcg(data):
  poly = [[4, 5, 10, 5, 10, 10, 4, 10]]  # = CROWD
  record = {'img2.png_0': dict(
      img_file_name='img2.png', caption='"The crowd of cars near a Grey strip."',
      refs=[dict(sentence='a grey strip', bbox=[0, 0, 20, 2],
                 segmentation=[[0, 0, 20, 0, 20, 2, 0, 2]]),
            dict(sentence='The crowd of cars', bbox=[4, 5, 6, 5], segmentation=poly),
            dict(sentence='a dog', bbox=[0, 0, 1, 1], segmentation=poly)])}
  (data / 'refcocog_gcg.json').write_text(json.dumps([record]))
  ex = GCGSource(str(data / 'refcocog_gcg.json'), str(data / 'images'), fmt='refcocog')[0]
  assert ex.turns[0][1] == ('[SEG]<image_id><image> <p> the crowd of cars </p> [SEG] near '
                            '[SEG]<image_id><image> <p> a grey strip </p> [SEG].')
  np.testing.assert_array_equal(decode_rle(ex.masks[0]), CROWD)
  np.testing.assert_array_equal(decode_rle(ex.masks[1]), STRIP)
  assert ex.meta['image_id'] == 'img2.png_0'


LLAVA = [
    dict(id=1, image='img1.jpg', conversations=[
        dict(value='What is this?\n<image>', **{'from': 'human'}),
        dict(value='A man.', **{'from': 'gpt'}),
        dict(value='And the colour?', **{'from': 'human'}),
        dict(value='Red.', **{'from': 'gpt'})]),
    dict(id='b', image='img2.png', conversations=[
        dict(value='Hello', **{'from': 'gpt'}),
        dict(value='Describe it.', **{'from': 'human'}),
        dict(value='Cars.', **{'from': 'gpt'})]),
    dict(id=3, conversations=[
        dict(value='Hi', **{'from': 'human'}),
        dict(value=' there', **{'from': 'human'}),
        dict(value='Hello!', **{'from': 'gpt'})]),
    dict(id=4, conversations=[
        dict(value='<image>\nHi', **{'from': 'human'}),
        dict(value='x', **{'from': 'gpt'})]),
]


@pytest.mark.parametrize('suffix', ['json', 'jsonl'])
def test_llava_conversations(data, suffix):
  path = data / f'llava.{suffix}'
  path.write_text(json.dumps(LLAVA) if suffix == 'json'
                  else '\n'.join(json.dumps(r) for r in LLAVA) + '\n')
  src = LLaVA(str(path), str(data / 'images'))
  assert len(src) == 4
  assert src[0].turns == (('<image>\nWhat is this?', 'A man.'), ('And the colour?', 'Red.'))
  assert src[0].image_path == str(data / 'images' / 'img1.jpg') and src[0].masks == ()
  assert src[1].turns == (('<image>\nDescribe it.', 'Cars.'),)  # placeholder added
  assert src[2].turns == (('Hi there', 'Hello!'),) and src[2].image_path == ''
  with pytest.raises(ValueError, match='without an image'):
    src[3]


def _jsonl(path, rows):
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  return str(path)


def test_pope_labels_match_questions_by_category_position(data):
  suffix = '\nAnswer the question using a single word or phrase.'
  questions = [dict(question_id=qid, image='img1.jpg', text=f'Is there a {obj} in the image?'
                    + suffix, category=cat)
               for qid, obj, cat in ((1, 'man', 'random'), (2, 'dog', 'adversarial'),
                                     (3, 'cat', 'random'), (4, 'car', 'adversarial'))]
  qfile = _jsonl(data / 'llava_pope_test.jsonl', questions)
  labels = {c: _jsonl(data / f'coco_pope_{c}.json', [dict(question_id=i, label=lab)
                                                      for i, lab in enumerate(ls)])
            for c, ls in (('random', ['yes', 'no']), ('adversarial', ['no', 'yes']))}
  items = eval_files.read_pope(qfile, str(data / 'images'), labels)
  assert [(e.meta['question_id'], e.meta['label']) for e in items] == [
      (1, 'yes'), (2, 'no'), (3, 'no'), (4, 'yes')]
  assert items[0].turns == (('<image>\nIs there a man in the image?' + suffix, 'yes'),)
  inline = _jsonl(data / 'coco_pope_inline.json', [dict(questions[0], label='no')])
  assert eval_files.read_pope(inline, str(data / 'images'))[0].meta['label'] == 'no'
  with pytest.raises(ValueError, match='labels for'):
    eval_files.read_pope(qfile, str(data / 'images'),
                         dict(labels, extra=labels['random']))


def test_attr_eval_jsonl_pairs(data):
  rows = [dict(image='img1.jpg', question=f'q{i}', question_id=i, answer=a)
          for i, a in enumerate(['Yes', 'No', 'No', 'Yes'])]
  items = eval_files.read_attr_eval(_jsonl(data / 'refcoco_attri.jsonl', rows),
                                    str(data / 'images'))
  assert [e.meta['pair'] for e in items] == [0, 0, 1, 1]
  assert items[1].turns == (('<image>\nq1', 'No'),)
  with pytest.raises(ValueError, match='pairs'):
    eval_files.read_attr_eval(_jsonl(data / 'odd.jsonl', rows[:3]), str(data / 'images'))


def test_chair_files(data):
  captions = dict(annotations=[dict(image_id=1, id=1, caption='A man next to cars.'),
                               dict(image_id=2, id=2, caption='A crowd.'),
                               dict(image_id=1, id=3, caption='A guy.')])
  (data / 'captions.json').write_text(json.dumps(captions))
  (data / 'ids.txt').write_text('2\n1\n')
  items = eval_files.read_chair(str(data / 'ids.txt'), [str(data / 'instances.json')],
                                [str(data / 'captions.json')], str(data / 'images'))
  assert [e.meta['image_id'] for e in items] == [2, 1]
  assert items[0].turns == (('<image>\n' + eval_files.CHAIR_QUESTION, ''),)
  assert items[1].meta['categories'] == ['car', 'dog', 'person']
  assert items[1].meta['captions'] == ['A man next to cars.', 'A guy.']
  synonyms = {'person': ['man', 'guy', 'crowd'], 'car': ['cars'], 'dog': []}
  assert eval_files.chair_ground_truth(items, synonyms) == {2: {'car', 'person'},
                                                            1: {'car', 'dog', 'person'}}
  with pytest.raises(KeyError):
    eval_files.read_chair([7], [str(data / 'instances.json')], [], str(data / 'images'))


# Ref 100's sentences: 'man in red shirt' (colour red), 'person on the left' (category person,
# location left), 'the guy' (none). The attributes missing from each possible choice:
MISSING = {'man in red shirt': {('category', 'person'), ('location', 'left')},
           'person on the left': {('colour', 'red')},
           'the guy': {('colour', 'red'), ('category', 'person'), ('location', 'left')}}


def _derive(d, seed):
  return attr_from_refs.derive_attr_items(str(d / 'refs(unc).p'), str(d / 'instances.json'),
                                          str(d / 'images'), 'train', seed=seed)


def test_attr_items_derived_from_refs(data):
  sentences = ['man in red shirt', 'person on the left', 'the guy']
  chosen = set()
  for seed in range(8):
    items = _derive(data, seed)
    assert items == _derive(data, seed)  # deterministic
    expression = items.refseg[0].meta['expression']
    chosen.add(expression)
    assert {(e.meta['kind'], e.meta['attribute']) for e in items.refseg} == MISSING[expression]
    for e in items.refseg:
      assert e.turns == (('<image>\n' + lira_tokens.referring_question(expression),
                          lira_tokens.referring_answer(expression)),)
      assert _area(e.masks[0]) == 36
      assert e.meta['attribute'] not in attr_from_refs.words(expression)
    assert len(items.yes_no) == 2 * len(MISSING[expression])  # every kind has a false word
    for k in range(0, len(items.yes_no), 2):
      a, b = items.yes_no[k], items.yes_no[k + 1]
      assert a.meta['pair'] == b.meta['pair'] == k // 2
      assert {a.meta['label'], b.meta['label']} == {'yes', 'no'}
      assert a.meta['kind'] == b.meta['kind'] and a.meta['attribute'] == b.meta['attribute']
      yes, no = (a, b) if a.meta['label'] == 'yes' else (b, a)
      assert yes.meta['asked'] == yes.meta['attribute']
      assert not any(no.meta['asked'] in attr_from_refs.words(s) for s in sentences)
      assert yes.turns[0][1] == 'yes' and no.turns[0][1] == 'no'
  assert len(chosen) > 1
  asked = {(e.meta['expression'], e.meta['kind'], e.meta['asked']): e.turns[0][0]
           for seed in range(8) for e in _derive(data, seed).yes_no}
  assert asked[('man in red shirt', 'location', 'right')] == (
      '<image>\nIs the object described as "man in red shirt" on the right?\n'
      'Answer the question using a single word or phrase.')
  assert {w for _, k, w in asked if k == 'category'} <= {'person', 'car', 'dog'}

