"""Chat templates, image placeholders and the SentencePiece tokenizer (on a tiny BPE model trained
here; SentencePiece itself and transformers' added-token splitting are the references)."""
import lira_jax  # noqa: F401  (first, per project convention)

import json
import random

import pytest
import sentencepiece as spm

from lira_jax import tokens

SYS = '你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。'


def test_single_image_single_turn_prompt():
  prompt = tokens.build_prompt('internlm2-chat', [('<image>\nWhat is in the image?', None)])
  prompt = tokens.expand_image_placeholders(prompt, [3])
  expected = ('<|im_start|>system\n' + SYS + '<|im_end|><|im_start|>user\n<img>'
              + '<IMG_CONTEXT>' * 768 + '</img>\nWhat is in the image?<|im_end|>'
              '<|im_start|>assistant\n')
  assert prompt == expected


def test_multi_turn_prompt_and_system_message():
  turns = [('<image>\nPlease segment the dog.', 'It is [SEG].'), ('And the cat?', None)]
  expected = ('<|im_start|>system\nBe brief.<|im_end|>'
              '<|im_start|>user\n<image>\nPlease segment the dog.<|im_end|>'
              '<|im_start|>assistant\nIt is [SEG].<|im_end|>'
              '<|im_start|>user\nAnd the cat?<|im_end|><|im_start|>assistant\n')
  assert tokens.build_prompt('internlm2-chat', turns, system_message='Be brief.') == expected
  # Hermes-2 (Qwen2 InternVL) renders the same strings.
  assert tokens.build_prompt('Hermes-2', turns, system_message='Be brief.') == expected
  # A completed last turn is the training transcript: it ends with the separator.
  done = tokens.build_prompt('internlm2-chat', [('Hi', 'Hello')], system_message='')
  assert done == ('<|im_start|>system\n<|im_end|><|im_start|>user\nHi<|im_end|>'
                  '<|im_start|>assistant\nHello<|im_end|>')
  with pytest.raises(KeyError):
    tokens.build_prompt('vicuna', turns)


def test_expand_image_placeholders_multi_image():
  out = tokens.expand_image_placeholders('a<image>b<image>c', [1, 2], num_image_token=2)
  assert out == ('a<img>' + '<IMG_CONTEXT>' * 2 + '</img>b<img>' + '<IMG_CONTEXT>' * 4
                 + '</img>c')
  with pytest.raises(ValueError):
    tokens.expand_image_placeholders('a<image>b', [1, 2])


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  """A tiny SentencePiece BPE (InternLM2-like settings) plus InternVL / LIRA added tokens."""
  d = tmp_path_factory.mktemp('tok')
  rnd = random.Random(0)
  words = ('the a cat dog sat on mat image segment please describe what is in this picture '
           'person car red blue left right of').split()
  lines = [' '.join(rnd.choice(words) for _ in range(rnd.randint(3, 12)))
           + ('' if k % 3 else ' ' + SYS[k % 20:k % 20 + 5]) for k in range(400)]
  (d / 'corpus.txt').write_text('\n'.join(lines), encoding='utf-8')
  spm.SentencePieceTrainer.train(
      input=str(d / 'corpus.txt'), model_prefix=str(d / 'tokenizer'), model_type='bpe',
      vocab_size=400, byte_fallback=True, add_dummy_prefix=False,
      normalization_rule_name='identity', remove_extra_whitespaces=False, hard_vocab_limit=False,
      minloglevel=2)
  internvl = ['<|im_end|>', '<|im_start|>', '<img>', '</img>', '<IMG_CONTEXT>']
  config = {
      'bos_token': '<s>', 'eos_token': {'content': '</s>', 'special': True},
      'added_tokens_decoder': {
          '0': {'content': '<unk>', 'special': True}, '1': {'content': '<s>', 'special': True},
          '2': {'content': '</s>', 'special': True},
          **{str(400 + k): {'content': t, 'special': True} for k, t in enumerate(internvl)}}}
  (d / 'tokenizer_config.json').write_text(json.dumps(config), encoding='utf-8')
  lira = ['[SEG]', '<p>', '</p>', '<region>', '<mark>', '<image_id>']
  (d / 'added_tokens.json').write_text(json.dumps({t: 405 + k for k, t in enumerate(lira)}))
  return d


@pytest.fixture(scope='module')
def tok(model_dir):
  return tokens.Tokenizer.from_dir(model_dir)


@pytest.fixture(scope='module')
def sp(model_dir):
  return spm.SentencePieceProcessor(model_file=str(model_dir / 'tokenizer.model'))


SEGMENTS = [('t', 'the cat sat'), ('s', '<img>'), ('s', '<IMG_CONTEXT>'), ('s', '<IMG_CONTEXT>'),
            ('s', '</img>'), ('t', '\nwhat is 这个?  🙂 '), ('s', '<|im_end|>'),
            ('s', '<|im_start|>'), ('t', 'assistant\n'), ('s', '<p>'), ('t', ' red car'),
            ('s', '</p>'), ('s', '[SEG]'), ('t', ' <p x'), ('s', '<image_id>')]


def test_encode_matches_sentencepiece_chunk_by_chunk(tok, sp):
  ids = {'<img>': 402, '</img>': 403, '<IMG_CONTEXT>': 404, '<|im_end|>': 400,
         '<|im_start|>': 401, '[SEG]': 405, '<p>': 406, '</p>': 407, '<image_id>': 410}
  expected = [1]
  for kind, s in SEGMENTS:
    expected += sp.encode(s) if kind == 't' else [ids[s]]
  text = ''.join(s for _, s in SEGMENTS)
  assert tok.encode(text) == expected
  assert tok.encode(text, add_bos=False) == expected[1:]
  assert tok.encode('') == [1] and tok.encode('', add_bos=False) == []
  assert tok.bos_id == 1 and tok.eos_id == 2


def test_encode_matches_transformers_added_token_split(tok, model_dir):
  transformers = pytest.importorskip('transformers')
  hf_dir = model_dir / 'hf'
  hf_dir.mkdir(exist_ok=True)
  (hf_dir / 'tokenizer.model').write_bytes((model_dir / 'tokenizer.model').read_bytes())
  (hf_dir / 'tokenizer_config.json').write_text(json.dumps(
      {'tokenizer_class': 'LlamaTokenizer', 'legacy': False, 'add_prefix_space': False}))
  hf = transformers.LlamaTokenizer.from_pretrained(str(hf_dir))
  ordered = sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
  hf.add_special_tokens({'additional_special_tokens': [t for t, i in ordered if i >= 400]})
  assert all(hf.convert_tokens_to_ids(t) == i for t, i in ordered)
  for text in [''.join(s for _, s in SEGMENTS), ' the <s> cat </s>dog', '<p><p></p>[SEG][SEG]']:
    assert tok.encode(text, add_bos=False) == hf(text, add_special_tokens=False).input_ids


def test_longest_special_token_wins(model_dir):
  t = tokens.Tokenizer(model_dir / 'tokenizer.model', special_tokens={'<x>': 500})
  t.add_special_tokens({'<x><y>': 501})
  assert t.encode('<x><y><x>', add_bos=False) == [501, 500]
  assert t.vocab_size == 502


def test_decode_round_trip(tok):
  for text in [''.join(s for _, s in SEGMENTS), '  double  spaces\n\ttab 🙂', '这个 [SEG]']:
    ids = tok.encode(text, add_bos=False)
    assert tok.decode(ids) == text
    assert tok.decode([tok.bos_id] + ids) == '<s>' + text
  ids = tok.encode('<p>red car</p> [SEG].<|im_end|>')
  assert tok.decode(ids, skip_special=True) == 'red car .'


def test_token_id_by_vocabulary(tok, sp):
  assert tok.token_id('<IMG_CONTEXT>') == 404
  assert tok.token_id('<image_id>') == 410
  assert tok.token_id('<s>') == 1
  piece = sp.id_to_piece(300)
  assert tok.token_id(piece) == 300
  with pytest.raises(KeyError):
    tok.token_id('the cat')  # text, not a vocabulary entry
  assert tok.stop_ids('internlm2-chat') == [400, 401, 2]
  assert tok.stop_ids('Hermes-2') == [400, 401]  # no <|endoftext|> in this vocabulary
  assert tok.vocab_size == 411


def test_added_token_may_rename_a_piece(model_dir, sp):
  # InternLM2 maps <|im_end|> etc. onto reserved pieces inside the SentencePiece range.
  t = tokens.Tokenizer(model_dir / 'tokenizer.model', special_tokens={'<|im_end|>': 5})
  assert t.encode('a<|im_end|>', add_bos=False) == sp.encode('a') + [5]
  assert t.decode([5]) == '<|im_end|>'
  assert t.vocab_size == sp.get_piece_size()


def test_errors(tmp_path, model_dir, tok):
  with pytest.raises(FileNotFoundError, match='tokenizer.model'):
    tokens.Tokenizer.from_dir(tmp_path)
  with pytest.raises(ValueError):
    tok.add_special_tokens({'[SEG]': 999})
  with pytest.raises(ValueError):
    tok.add_special_tokens({'[NEW]': 405})
  tok.add_special_tokens({'[SEG]': 405})  # identical pair: no-op
  with pytest.raises(ValueError):
    tok.decode([10_000])
  (tmp_path / 'tokenizer.model').write_bytes((model_dir / 'tokenizer.model').read_bytes())
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps(
      {'added_tokens_decoder': {'400': {'content': '[SEG]'}}}))
  (tmp_path / 'added_tokens.json').write_text(json.dumps({'[SEG]': 401}))
  with pytest.raises(ValueError, match='SEG'):
    tokens.Tokenizer.from_dir(tmp_path)
