"""LIRA special tokens, the answer strings of the released LIRA / GSVA data code, the vocabulary
resize rule (vs the released torch code), and GSVA's [REJ] conventions (lira_jax.rej)."""
import lira_jax  # noqa: F401  (first, per project convention)

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lira_jax import lira_tokens, rej, sequence, tokens
from tests.test_sequence import build_tokenizer


@pytest.fixture(scope='module')
def tok_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp('tok')
  build_tokenizer(directory)
  return directory


def test_released_ids_on_an_internvl2_sized_vocabulary(tok_dir):
  # InternVL2's added tokens end at 92552 (</box>), so its vocabulary has 92553 entries.
  internvl = {'<|im_end|>': 92542, '<|im_start|>': 92543, '<img>': 92544, '</img>': 92545,
              '<IMG_CONTEXT>': 92546, '<quad>': 92547, '</quad>': 92548, '<ref>': 92549,
              '</ref>': 92550, '<box>': 92551, '</box>': 92552}
  tok = tokens.Tokenizer(tok_dir / 'tokenizer.model', special_tokens=internvl)
  assert tok.vocab_size == 92553
  added = lira_tokens.add_lira_tokens(tok)
  assert added == dict(lira_tokens.LIRA_SPECIAL_TOKENS + (lira_tokens.REJ_TOKEN,))
  assert [tok.token_id(t) for t, _ in lira_tokens.LIRA_SPECIAL_TOKENS] == list(range(92553, 92559))
  assert tok.token_id('[REJ]') == 92559 and tok.vocab_size == 92560
  cfg = lira_tokens.token_config(tok)
  assert cfg == dict(seg=92553, p_start=92554, p_end=92555, region=92556, mark=92557,
                     image_id=92558, rej=92559, im_end=92542, im_start=92543, bos=1, eos=2)
  # Adding again is a no-op; a tokenizer that already has the six LIRA tokens only gains [REJ].
  assert lira_tokens.add_lira_tokens(tok) == added
  lira_only = tokens.Tokenizer(tok_dir / 'tokenizer.model',
                               special_tokens={**internvl, **dict(lira_tokens.LIRA_SPECIAL_TOKENS)})
  assert lira_tokens.add_lira_tokens(lira_only)['[REJ]'] == 92559
  assert '[REJ]' not in lira_tokens.add_lira_tokens(tokens.Tokenizer.from_dir(tok_dir),
                                                    with_rej=False)


@pytest.fixture
def tok(tok_dir):
  t = tokens.Tokenizer.from_dir(tok_dir)
  lira_tokens.add_lira_tokens(t)
  return t


def test_special_tokens_encode_as_single_ids(tok):
  names = [t for t, _ in lira_tokens.LIRA_SPECIAL_TOKENS + (lira_tokens.REJ_TOKEN,)]
  assert [tok.token_id(t) for t in names] == list(range(405, 412))  # appended after 404
  enc = tok.encode('[SEG]<image_id> <p> x </p> [REJ]', add_bos=False)
  assert [i for i in enc if i >= 405] == [405, 410, 406, 407, 411]


def test_referring_and_gcg_answers():
  assert (lira_tokens.referring_answer(' The Man on the LEFT ')
          == '[SEG]<image_id><image> <p> the man on the left </p> [SEG].')
  assert lira_tokens.referring_question('The Man ') == 'Please segment the man.'
  caption = 'A man rides a horse near two dogs.'
  spans = [(29, 33), (2, 5), (14, 19)]  # unsorted: replacement goes by start, from the right
  assert lira_tokens.gcg_answer(caption, spans) == (
      'A [SEG]<image_id><image> <p> man </p> [SEG] rides a '
      '[SEG]<image_id><image> <p> horse </p> [SEG] near two '
      '[SEG]<image_id><image> <p> dogs </p> [SEG].')


def test_gres_answer_formats():
  targets = [('two dogs', True), ('the kid in blue', False)]
  expected = [
      'The segmentation results are two dogs [SEG], the kid in blue [REJ].',
      'Sure, they are two dogs:[SEG], the kid in blue:[REJ].',
      'Sure, the mask of two dogs is [SEG], the mask of the kid in blue is [REJ].',
      'Sure, the segmentation of two dogs is [SEG], the segmentation of the kid in blue is [REJ].',
      'Sure, the referred two dogs is [SEG], the referred the kid in blue is [REJ].']
  assert [lira_tokens.gres_answer(targets, c) for c in range(5)] == expected
  # The original replaces every literal SEG of an absent target's part.
  assert lira_tokens.gres_answer([('SEGA car', False)], 1) == 'Sure, they are REJA car:[REJ].'
  assert (lira_tokens.gres_eval_answer(targets)
          == 'Sure,two dogs:[SEG], the kid in blue:[REJ].')


def test_gres_questions_and_conversation():
  exprs = [' Two dogs. ', 'The kid in blue', '.a cat.']
  assert rej.gres_question(exprs, 0) == (
      '<image>\nCan you segment two dogs, the kid in blue, a cat in this image?')
  assert rej.gres_eval_question(exprs) == (
      '<image>\n What are two dogs, the kid in blue, a catin this image? '
      'Please output segmentation masks.')
  assert rej.grefcoco_conversation(exprs, [False, False, False], random.Random(0)) is None
  rng, twin = random.Random(3), random.Random(3)
  question, answer = rej.grefcoco_conversation(exprs, [True, False, True], rng)
  choice = twin.randrange(5)
  assert question == rej.GRES_QUESTIONS[twin.randrange(4)].format(
      'two dogs, the kid in blue, a cat')
  assert answer == lira_tokens.gres_answer(
      [('Two dogs', True), ('The kid in blue', False), ('a cat', True)], choice)
  assert rej.parse_targets(answer) == [True, False, True]


def test_target_flags_and_reeval(tok):
  cfg = lira_tokens.token_config(tok)
  ids = tok.encode(lira_tokens.gres_eval_answer([('a', False), ('b', True), ('c', False)]))
  assert rej.target_flags(ids, cfg['seg'], cfg['rej']) == [False, True, False]
  re_ids = np.asarray(rej.reeval_ids(jnp.asarray(ids), cfg['seg'], cfg['rej']))
  assert rej.target_flags(re_ids, cfg['seg'], cfg['rej']) == [True, True, True]


def test_teacher_forced_rejection_rule():
  seg, rejected = 7, 8
  # One packed row: GT tokens at slots 3 ([SEG]), 5 ([REJ]), 8 ([SEG]), 10 ([REJ]).
  plan = sequence.SequencePlan(
      src=None, valid=None, positions=None, labels=None,
      seg_index=jnp.array([[3, 5, 8, 10, 0]]), seg_valid=jnp.array([[1, 1, 1, 1, 0]], bool),
      seg_is_rej=jnp.array([[0, 1, 0, 1, 0]], bool), seg_target=None, length=None, num_seg=None)
  pred = np.zeros((1, 12), np.int32)
  pred[0, [2, 4, 7, 9]] = [seg, rejected, rejected, 3]  # argmax one slot before each GT token
  out = np.asarray(rej.teacher_forced_rejection(jnp.asarray(pred), plan, seg, rejected))
  # GT [SEG] -> target iff argmax [SEG]; GT [REJ] -> rejected iff argmax [REJ].
  assert out.tolist() == [[False, True, True, False, False]]


@pytest.mark.parametrize('tied', [False, True])
def test_resize_matches_released_torch_code(tied):
  rng = np.random.default_rng(0)
  vocab, dim, added = 50, 8, 7
  emb = rng.normal(size=(vocab, dim)).astype(np.float32)
  head = None if tied else rng.normal(size=(dim, vocab)).astype(np.float32)
  new_emb, new_head = lira_tokens.resize_vocab(emb, head, vocab + added, jax.random.key(0))
  # Released (lira.py _add_special_tokens): resize, then output rows[-n:] = mean(output rows[:-n]).
  t_emb = torch.nn.Embedding(vocab + added, dim)
  t_emb.weight.data[:vocab] = torch.from_numpy(emb)
  t_out = t_emb.weight.data if tied else torch.zeros(vocab + added, dim)
  if not tied:
    t_out[:vocab] = torch.from_numpy(head.T)
  t_out[-added:] = t_out[:-added].mean(dim=0, keepdim=True)
  np.testing.assert_array_equal(np.asarray(new_emb)[:vocab], emb)
  if tied:
    assert new_head is None
    np.testing.assert_allclose(np.asarray(new_emb), t_emb.weight.data.numpy(), atol=1e-7)
  else:
    np.testing.assert_allclose(np.asarray(new_head).T, t_out.numpy(), atol=1e-7)
    fresh = np.asarray(new_emb)[vocab:]
    assert fresh.shape == (added, dim) and 0.005 < fresh.std() < 0.05
    again, _ = lira_tokens.resize_vocab(emb, head, vocab + added, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(again), np.asarray(new_emb))


def test_resize_mean_rule_and_errors():
  emb = jnp.arange(12, dtype=jnp.bfloat16).reshape(4, 3)
  head = jnp.arange(12, dtype=jnp.float32).reshape(3, 4)
  new_emb, new_head = lira_tokens.resize_vocab(emb, head, 6, jax.random.key(1), rule='mean')
  assert new_emb.dtype == jnp.bfloat16 and new_emb.shape == (6, 3) and new_head.shape == (3, 6)
  np.testing.assert_array_equal(np.asarray(new_emb[4:], np.float32), [[4.5, 5.5, 6.5]] * 2)
  np.testing.assert_array_equal(np.asarray(new_head[:, 4:]), [[1.5] * 2, [5.5] * 2, [9.5] * 2])
  same = lira_tokens.resize_vocab(emb, head, 4, jax.random.key(1))
  assert same[0] is emb and same[1] is head
  with pytest.raises(ValueError):
    lira_tokens.resize_vocab(emb, head, 3, jax.random.key(1))
  with pytest.raises(ValueError):
    lira_tokens.resize_vocab(emb, head, 6, jax.random.key(1), rule='zeros')
