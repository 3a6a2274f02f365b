"""POPE and CHAIR against hand-counted cases (evaluation.md §2.4, §2.5)."""
from __future__ import annotations

import pytest

from lira_jax.eval.chair import (chair_for_images, chair_metrics, extract_mentions,
                                 image_gt_objects)
from lira_jax.eval.pope import parse_yes_no, pope_metrics


@pytest.mark.parametrize('answer, is_yes', [
    ('Yes, there is a dog.', True),
    ('No.', False),
    ('There is not a cat', False),
    ('no, none', False),        # comma dropped, then "no" is a word
    ('Yes. No cats.', True),    # only the first sentence counts
    ('NO', True),               # only 'No', 'no' and 'not' mean no
    ('nothing', True),
    ('No\nthere is none', True),  # split on single spaces: the first word is 'No\nthere'
    ('', True),
])
def test_parse_yes_no(answer, is_yes):
  assert parse_yes_no(answer) is is_yes


def test_pope_metrics():
  answers = ['Yes', 'yes', 'No', 'Yes', 'Yes', 'no']
  labels = ['yes', 'yes', 'yes', 'no', 'no', 'no']
  r = pope_metrics(answers, labels)
  # TP 2 (0, 1), FN 1 (2), FP 2 (3, 4), TN 1 (5).
  assert (r['tp'], r['fn'], r['fp'], r['tn']) == (2, 1, 2, 1)
  assert r['accuracy'] == pytest.approx(3 / 6)
  assert r['precision'] == pytest.approx(2 / 4)
  assert r['recall'] == pytest.approx(2 / 3)
  assert r['f1'] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))  # 4/7
  assert r['yes_ratio'] == pytest.approx(4 / 6)


def test_pope_all_no_empty_answers_and_no_questions():
  labels = ['yes', 'yes', 'no']
  r = pope_metrics(['No'] * 3, labels)  # every answer rejects: TN 1, FN 2
  assert r['accuracy'] == pytest.approx(1 / 3)
  assert (r['precision'], r['recall'], r['f1'], r['yes_ratio']) == (0.0, 0.0, 0.0, 0.0)
  r = pope_metrics([''] * 3, labels)  # empty answers parse as yes: TP 2, FP 1
  assert r['accuracy'] == pytest.approx(2 / 3) and r['precision'] == pytest.approx(2 / 3)
  assert r['recall'] == 1.0 and r['f1'] == pytest.approx(0.8) and r['yes_ratio'] == 1.0
  r = pope_metrics([], [])
  assert r['accuracy'] == r['f1'] == r['yes_ratio'] == r['count'] == 0.0
  with pytest.raises(ValueError):
    pope_metrics(['yes'], [])


SYNONYMS = {
    'person': ['man', 'woman', 'people'],
    'dog': ['puppy', 'dogs'],
    'cat': ['kitten'],
    'chair': ['seat', 'stool'],
    'toilet': [],
    'traffic light': ['stop light'],
    'hot dog': [],
    'train': ['locomotive'],
}


@pytest.mark.parametrize('caption, expected', [
    ('A man and a puppy sit on a seat next to a traffic light.',
     ['person', 'dog', 'chair', 'traffic light']),
    ('The seat of the toilet is up.', ['toilet']),      # a seat with a toilet is no chair
    ('A toilet seat.', ['toilet']),
    ('A baby cat near a hot dog', ['cat', 'hot dog']),  # "hot dog" is not a dog
    ('A train track and a stop light', ['traffic light']),  # "train track" hides the train
    ('Two dogs chase a dog', ['dog', 'dog']),               # mentions repeat
    ("The dog's kitten", ['dog', 'cat']),
    ('An empty street', []),
    ('', []),
])
def test_extract_mentions(caption, expected):
  assert extract_mentions(caption, SYNONYMS) == expected


def test_extract_mentions_uses_the_lemmatizer_and_compounds_given():
  synonyms = {'dog': [], 'cat': []}
  plural = {'dogs': 'dog', 'cats': 'cat'}
  assert extract_mentions('Dogs and cats', synonyms) == []
  assert extract_mentions('Dogs and cats', synonyms, lemmatize=lambda w: plural.get(w, w)) == [
      'dog', 'cat']
  # Without the default compounds "baby cat" is two words and still mentions a cat; a custom
  # compound can hide one.
  assert extract_mentions('a baby cat', synonyms, compounds={}) == ['cat']
  assert extract_mentions('a cat toy', synonyms, compounds={'cat toy': 'toy'}) == []


def test_chair_metrics():
  mentions = [['person', 'dog', 'dog', 'cat'], ['toilet'], [], ['train', 'train']]
  gt = [{'person', 'dog'}, {'toilet', 'chair', 'sink'}, {'car'}, set()]
  r = chair_metrics(mentions, gt, lengths=[10, 4, 3, 5])
  assert r['chair_s'] == pytest.approx(2 / 4)          # captions 0 and 3 hallucinate
  assert r['chair_i'] == pytest.approx((1 + 2) / 7)    # cat, train, train of 4 + 1 + 0 + 2
  assert r['recall'] == pytest.approx((2 + 1) / (2 + 3 + 1))
  assert r['len'] == pytest.approx(22 / 4) and r['count'] == 4


def test_chair_empty_captions_targets_and_no_images():
  r = chair_metrics([[], []], [{'dog'}, {'cat', 'person'}])  # nothing mentioned
  assert (r['chair_s'], r['chair_i'], r['recall']) == (0.0, 0.0, 0.0)
  assert 'len' not in r
  r = chair_metrics([['dog'], []], [set(), set()])  # no ground-truth objects
  assert (r['chair_s'], r['chair_i'], r['recall']) == (0.5, 1.0, 0.0)
  r = chair_metrics([], [])
  assert (r['chair_s'], r['chair_i'], r['recall'], r['count']) == (0.0, 0.0, 0.0, 0.0)
  with pytest.raises(ValueError):
    chair_metrics([[]], [])


def test_chair_for_images_uses_exactly_the_frozen_ids():
  captions = {1: 'A man with two dogs.', 2: 'A cat.', 3: 'A kitten on a stool.'}
  gt = {1: {'person', 'dog'}, 2: set(), 3: {'cat'}}
  r = chair_for_images([3, 1], captions, gt, SYNONYMS)
  # Image 1: person, dog (both true). Image 3: cat (true), chair (hallucinated). Image 2 unused.
  assert r['chair_s'] == pytest.approx(1 / 2) and r['chair_i'] == pytest.approx(1 / 4)
  assert r['recall'] == 1.0 and r['len'] == 5.0 and r['count'] == 2
  with pytest.raises(KeyError):
    chair_for_images([1, 4], captions, gt, SYNONYMS)


def test_image_gt_objects_joins_categories_and_caption_mentions():
  objects = image_gt_objects(['person', 'dog'], ['A woman holds a kitten', 'a puppy'], SYNONYMS)
  assert objects == {'person', 'dog', 'cat'}
  assert image_gt_objects([], [], SYNONYMS) == set()
