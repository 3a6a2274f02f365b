"""xtuner-style encoding and the static-shape splice, against literal re-implementations of the
originals: xtuner's template_map_fn + encode_fn (LIRA's copy, multi-image answers) and LIRA's
prepare_inputs_labels_for_multimodal_with_visual_prompts as Python list operations."""
import lira_jax  # noqa: F401  (first, per project convention)

import copy
import json
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm

from lira_jax import ilvc, lira_tokens, rej, sequence, tokens

SYS = tokens.INTERNVL2_SYSTEM_MESSAGE
IMAGE = sequence.IMAGE_TOKEN_INDEX
IGNORE = sequence.IGNORE_INDEX


def build_tokenizer(directory) -> tokens.Tokenizer:
  """A tiny SentencePiece BPE with InternVL's added tokens at 400..404 (shared with the other
  LIRA test files; LIRA tokens are added by the tests that need them)."""
  rnd = random.Random(0)
  words = ('the a man dog dogs cat sat on mat image segment please describe what is in this '
           'picture person car red blue left right of kid horse rides sure mask').split()
  lines = [' '.join(rnd.choice(words) for _ in range(rnd.randint(3, 12)))
           + ('' if k % 3 else ' ' + SYS[k % 20:k % 20 + 5]) for k in range(400)]
  (directory / 'corpus.txt').write_text('\n'.join(lines), encoding='utf-8')
  spm.SentencePieceTrainer.train(
      input=str(directory / 'corpus.txt'), model_prefix=str(directory / 'tokenizer'),
      model_type='bpe', vocab_size=400, byte_fallback=True, add_dummy_prefix=False,
      normalization_rule_name='identity', remove_extra_whitespaces=False, hard_vocab_limit=False,
      minloglevel=2)
  internvl = ['<|im_end|>', '<|im_start|>', '<img>', '</img>', '<IMG_CONTEXT>']
  config = {'bos_token': '<s>', 'eos_token': '</s>', 'added_tokens_decoder': {
      str(400 + k): {'content': t, 'special': True} for k, t in enumerate(internvl)}}
  (directory / 'tokenizer_config.json').write_text(json.dumps(config), encoding='utf-8')
  return tokens.Tokenizer.from_dir(directory)


@pytest.fixture(scope='module')
def tok(tmp_path_factory):
  t = build_tokenizer(tmp_path_factory.mktemp('tok'))
  lira_tokens.add_lira_tokens(t)
  return t


@pytest.fixture(scope='module')
def ids(tok):
  return lira_tokens.token_config(tok)


# ---- literal xtuner (echo840/LIRA copy): template_map_fn + encode_fn(with_image_token=True) ----

INTERNVL2_CHAT = dict(
    SYSTEM='<|im_start|>system\n' + SYS + '<|im_end|>',
    INSTRUCTION='<|im_start|>user\n{input}<|im_end|><|im_start|>assistant\n',
    SUFFIX='<|im_end|>', SUFFIX_AS_EOS=True, SEP='')


class HFTokenizerView:
  """The slice of a transformers tokenizer that encode_fn touches."""

  def __init__(self, tok):
    self.tok, self.bos_token_id, self.eos_token_id = tok, tok.bos_id, tok.eos_id

  def encode(self, text, add_special_tokens):
    assert not add_special_tokens
    return self.tok.encode(text, add_bos=False)


def xtuner_template_map_fn(conversation, template):
  for i, turn in enumerate(conversation):
    input_text = template['INSTRUCTION'].format(input=turn.get('input', ''), round=i + 1)
    if i == 0:  # the InternVL system sentence is in SYSTEM: first turn only
      input_text = template['SYSTEM'] + input_text
    turn['input'] = input_text
    turn['output'] = turn.get('output', '') + template['SUFFIX']
    turn['need_eos_token'] = not template['SUFFIX_AS_EOS']
    turn['sep'] = template['SEP']
  return conversation


def xtuner_encode_fn(conversation, tokenizer, max_length):
  bos, eos = [tokenizer.bos_token_id], [tokenizer.eos_token_id]
  input_ids, labels = [], []
  next_needs_bos_token = True
  for turn in conversation:
    inp = turn['input']
    if '<image>' in inp:
      chunk_encode = [tokenizer.encode(c, add_special_tokens=False) for c in inp.split('<image>')]
      assert len(chunk_encode) == 2
      input_encode = []
      for idx, cur in enumerate(chunk_encode):
        input_encode.extend(cur)
        if idx != len(chunk_encode) - 1:
          input_encode.append(IMAGE)
    else:
      input_encode = tokenizer.encode(inp, add_special_tokens=False)
    if next_needs_bos_token:
      input_ids += bos
      labels += [IGNORE] * len(bos)
    input_ids += input_encode
    labels += [IGNORE] * len(input_encode)
    out = turn['output']
    if '<image>' in out:
      chunk_encode = [tokenizer.encode(c, add_special_tokens=False) for c in out.split('<image>')]
      output_encode = []
      for idx, cur in enumerate(chunk_encode):
        output_encode.extend(cur)
        if idx != len(chunk_encode) - 1:
          output_encode.append(IMAGE)
    else:
      output_encode = tokenizer.encode(out, add_special_tokens=False)
    input_ids += output_encode
    labels += copy.deepcopy(output_encode)
    if turn.get('need_eos_token', True):
      next_needs_bos_token = True
      input_ids += eos
      labels += copy.deepcopy(eos)
    else:
      next_needs_bos_token = False
    if turn['sep'] != '':
      sep_encode = tokenizer.encode(turn['sep'], add_special_tokens=False)
      input_ids += sep_encode
      labels += [IGNORE] * len(sep_encode)
  if len(input_ids) > max_length:
    input_ids, labels = input_ids[:max_length], labels[:max_length]
  return input_ids, labels


def xtuner_reference(tok, turns, max_length=4096):
  conversation = [{'input': u, 'output': a} for u, a in turns]
  conversation = xtuner_template_map_fn(conversation, INTERNVL2_CHAT)
  return xtuner_encode_fn(conversation, HFTokenizerView(tok), max_length)


REFERRING = [('<image>\n' + lira_tokens.referring_question('The red car'),
              lira_tokens.referring_answer('The red car')),
             (lira_tokens.referring_question('man on left'),
              lira_tokens.referring_answer('man on left'))]
GCG = [('<image>\nPlease describe in detail the contents of the image.',
        lira_tokens.gcg_answer('a man rides a horse on the left', [(14, 19), (0, 5)]))]
GRES_TARGETS = [('two dogs', True), ('the kid in blue', False), ('a cat', True)]
GRES = [(rej.gres_question([t for t, _ in GRES_TARGETS], 1),
         lira_tokens.gres_answer(GRES_TARGETS, 2))]
TEXT_ONLY = [('What is a dog?', 'A dog is a pet.'), ('And a cat?', 'Also a pet.')]


@pytest.mark.parametrize('turns', [REFERRING, GCG, GRES, TEXT_ONLY,
                                   [(u, ilvc.strip_ilvc(a)) for u, a in REFERRING]])
def test_encode_conversation_matches_xtuner(tok, turns):
  ids, labels = sequence.encode_conversation(tok, 'internlm2-chat', turns)
  assert (ids, labels) == xtuner_reference(tok, turns)
  assert ids[0] == tok.bos_id and labels[0] == IGNORE and ids.count(tok.bos_id) == 1
  short = sequence.encode_conversation(tok, 'internlm2-chat', turns, max_length=37)
  assert short == xtuner_reference(tok, turns, max_length=37)


def test_encode_conversation_labels_layout(tok, ids):
  seq_ids, labels = sequence.encode_conversation(tok, 'internlm2-chat', REFERRING[:1])
  # One main image in the question, one local image in the answer; the answer's sentinel is a
  # label (it disappears when spliced), the question's is not.
  images = [k for k, i in enumerate(seq_ids) if i == IMAGE]
  assert len(images) == 2 and labels[images[0]] == IGNORE and labels[images[1]] == IMAGE
  answer = [i for i, l in zip(seq_ids, labels) if l != IGNORE]
  assert answer[0] == ids['seg'] and answer[1] == ids['image_id'] and answer[2] == IMAGE
  assert answer[-1] == ids['im_end'] and answer.count(ids['seg']) == 2
  no_system = sequence.encode_conversation(tok, 'internlm2-chat', TEXT_ONLY, system_message='')
  assert tok.decode(no_system[0][1:]).startswith('<|im_start|>user\nWhat is a dog?')


# ---- packing vs the original splice, on Python lists ----

H, V, R, N = 6, 12, 3, 4  # hidden, main visual slots, region slots, tokens per region


def splice_reference(seq_ids, labels, embed_table, vis, vis_valid, regs, reg_valid):
  """prepare_inputs_labels_for_multimodal_with_visual_prompts for one unpadded sample."""
  visual = [vis[vis_valid]] + [regs[r] for r in range(R) if reg_valid[r]]
  out_embeds, out_labels, used = [], [], 0
  for i, lab in zip(seq_ids, labels):
    if i == IMAGE:
      block = visual[used]
      used += 1
      out_embeds += list(block)
      out_labels += [IGNORE] * len(block)
    else:
      out_embeds.append(embed_table[i])
      out_labels.append(lab)
  return np.array(out_embeds).reshape(-1, H), out_labels


def make_batch(tok, ids, rng):
  """Five samples: ILVC referring (2 local images), ILVC GCG (2), non-ILVC referring, GSVA [REJ],
  text only; different visual validity patterns (valid slots first, or scattered)."""
  samples = [(REFERRING, 'ilvc'), (GCG, 'ilvc'), ([(u, ilvc.strip_ilvc(a)) for u, a in REFERRING],
                                                  'plain'), (GRES, 'plain'), (TEXT_ONLY, 'none')]
  encoded = [sequence.encode_conversation(tok, 'internlm2-chat', t) for t, _ in samples]
  lt = max(len(e[0]) for e in encoded) + 5
  text_ids, labels, text_valid = sequence.pad_batch(encoded, lt)
  vis_valid = np.zeros((5, V), bool)
  vis_valid[0, :9] = True
  vis_valid[1, [0, 2, 3, 7, 11]] = True
  vis_valid[2, 4:] = True
  vis_valid[3, ::2] = True
  vis_valid[4, :3] = True  # text-only: the visual block is not used at all
  reg_valid = np.stack([ilvc.region_slots(e[0], R) for e in encoded])
  vis = rng.normal(size=(5, V, H)).astype(np.float32)
  regs = rng.normal(size=(5, R, N, H)).astype(np.float32)
  return samples, encoded, (text_ids, labels, text_valid, vis, vis_valid, regs, reg_valid)


def pack(batch, embed_table, ids, max_len, max_seg=8):
  text_ids, labels, text_valid, vis, vis_valid, regs, reg_valid = batch

  @jax.jit
  def run(text_ids, labels, text_valid, vis, vis_valid, regs, reg_valid):
    text_embeds = jnp.asarray(embed_table)[sequence.text_embed_ids(text_ids)]
    return sequence.pack_sequence(text_embeds, vis, vis_valid, regs, reg_valid, text_ids, labels,
                                  text_valid, max_len=max_len, max_seg=max_seg, tokens=ids)

  embeds, plan = run(*batch)
  return jax.tree.map(np.asarray, plan), np.asarray(embeds)


@pytest.fixture(scope='module')
def batch_and_table(tok, ids):
  rng = np.random.default_rng(0)
  embed_table = rng.normal(size=(tok.vocab_size, H)).astype(np.float32)
  return make_batch(tok, ids, rng), embed_table


def test_pack_matches_reference_splice(batch_and_table, ids):
  (samples, encoded, batch), embed_table = batch_and_table
  text_ids, labels, text_valid, vis, vis_valid, regs, reg_valid = batch
  assert reg_valid.sum(1).tolist() == [2, 2, 0, 0, 0]
  max_len = 256
  plan, embeds = pack(batch, embed_table, ids, max_len)
  for b, ((_, kind), (s_ids, s_labels)) in enumerate(zip(samples, encoded)):
    ref_embeds, ref_labels = splice_reference(s_ids, s_labels, embed_table, vis[b], vis_valid[b],
                                              regs[b], reg_valid[b])
    n = len(ref_labels)
    assert plan.length[b] == n <= max_len
    np.testing.assert_array_equal(plan.valid[b], np.arange(max_len) < n)
    np.testing.assert_array_equal(embeds[b, :n], ref_embeds)
    assert not embeds[b, n:].any()
    assert plan.labels[b, :n].tolist() == ref_labels and (plan.labels[b, n:] == IGNORE).all()
    np.testing.assert_array_equal(plan.positions[b, :n], np.arange(n))
    # [SEG]/[REJ]: label tokens in sequence order (LIRA selects by label == [SEG]).
    seg_pos = [p for p, l in enumerate(ref_labels) if l in (ids['seg'], ids['rej'])]
    m = len(seg_pos)
    assert plan.num_seg[b] == m and plan.seg_valid[b].sum() == m
    assert plan.seg_index[b, :m].tolist() == seg_pos
    assert plan.seg_is_rej[b, :m].tolist() == [ref_labels[p] == ids['rej'] for p in seg_pos]
    # Targets: the original's repeat_interleave(2) for ILVC answers, one per token otherwise.
    expected = [k // 2 for k in range(m)] if kind == 'ilvc' else list(range(m))
    assert plan.seg_target[b, :m].tolist() == expected
  assert plan.seg_is_rej[3, :3].tolist() == [False, True, False]
  np.testing.assert_array_equal(rej.mask_loss_weights(plan)[3, :4], [1, 0, 1, 0])


def test_batch_equals_per_sample(batch_and_table, ids):
  (_, _, batch), embed_table = batch_and_table
  plan, embeds = pack(batch, embed_table, ids, 256)
  for b in range(batch[0].shape[0]):
    one_plan, one_embeds = pack(tuple(x[b:b + 1] for x in batch), embed_table, ids, 256)
    np.testing.assert_array_equal(one_embeds[0], embeds[b])
    for name, field in one_plan._asdict().items():
      np.testing.assert_array_equal(field[0], getattr(plan, name)[b], err_msg=name)


def test_truncation_keeps_the_prefix(batch_and_table, ids):
  (_, _, batch), embed_table = batch_and_table
  full_plan, full = pack(batch, embed_table, ids, 256)
  cut = int(full_plan.length[0]) - 8  # inside sample 0's last answer
  plan, embeds = pack(batch, embed_table, ids, cut, max_seg=3)
  np.testing.assert_array_equal(embeds, full[:, :cut])
  np.testing.assert_array_equal(plan.labels, full_plan.labels[:, :cut])
  np.testing.assert_array_equal(plan.length, full_plan.length)  # the untruncated need
  expected_valid = np.arange(cut) < np.minimum(full_plan.length, cut)[:, None]
  np.testing.assert_array_equal(plan.valid, expected_valid)
  for b in range(len(plan.length)):
    kept = [(i, t) for i, t, v in zip(full_plan.seg_index[b], full_plan.seg_target[b],
                                      full_plan.seg_valid[b]) if v and i < cut][:3]
    m = int(plan.seg_valid[b].sum())
    assert list(zip(plan.seg_index[b, :m], plan.seg_target[b, :m])) == kept
  assert plan.seg_valid[0].sum() == 3 and full_plan.num_seg[0] == plan.num_seg[0] == 4


def test_missing_region_slot_drops_its_block(batch_and_table, ids):
  (_, encoded, batch), embed_table = batch_and_table
  text_ids, labels, text_valid, vis, vis_valid, regs, reg_valid = batch
  reg_off = reg_valid.copy()
  reg_off[0, 1] = False
  plan, _ = pack((text_ids, labels, text_valid, vis, vis_valid, regs, reg_off), embed_table, ids,
                 256)
  full_plan, _ = pack(batch, embed_table, ids, 256)
  assert plan.length[0] == full_plan.length[0] - N
  np.testing.assert_array_equal(plan.length[1:], full_plan.length[1:])
