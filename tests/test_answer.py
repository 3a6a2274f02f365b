"""Reading generated answers back: ILVC pairs give one target with the <p> phrase and the first
[SEG]'s slot; GSVA answers give one target per [SEG]/[REJ] with the template words removed; a chat
history turn takes the non-ILVC form."""
import pytest

import lira_jax  # noqa: F401
from configs.common import stage_config
from lira_jax import lira_tokens
from lira_jax.data import synthetic
from lira_jax.data.synthetic_tokenizer import world_tokenizer
from lira_jax.infer.answer import Target, history_answer, read_answer

CFG = stage_config('configs/tiny_synthetic.py:smoke', 2)
TOK = world_tokenizer(synthetic.vocabulary_texts(), CFG.tokens)
T = dict(CFG.tokens)


def generated(answer: str) -> list[int]:
  """The ids a model would generate for a training answer: the local images are not tokens."""
  return TOK.encode(answer.replace('<image>', ''), add_bos=False)


def test_ilvc_gcg_answer():
  answer = lira_tokens.gcg_answer('The image shows a red circle and a blue square.',
                                  [(16, 28), (33, 46)])
  text, targets = read_answer(TOK, generated(answer), T)
  assert targets == [Target('a red circle', 0, False), Target('a blue square', 2, False)]
  assert '[SEG]<image_id>' not in text and text.startswith('The image shows')


@pytest.mark.parametrize('choice', range(len(lira_tokens.GRES_ANSWER_FORMATS)))
def test_gsva_answer_every_format(choice):
  answer = lira_tokens.gres_answer([('the red circle', True), ('all green stars', False)],
                                   choice)
  _, targets = read_answer(TOK, generated(answer), T)
  assert targets == [Target('the red circle', 0, False), Target('all green stars', 1, True)]


def test_history_answer_strips_ilvc():
  ids = generated(lira_tokens.referring_answer('the red circle'))
  assert history_answer(TOK, ids, T) == '[SEG] <p> the red circle </p>.'
