"""The synthetic referring world: scenes of coloured shapes, generated on the fly from a seed, and
the LIRA training samples asked about them.

A scene is a noisy background with grey clutter strokes and 3-6 objects (shape, colour, size,
position) drawn in order, later ones over earlier ones; an object's mask is its visible pixels,
so masks are disjoint. Objects are re-drawn until each keeps most of its area visible.

Expressions (all lower case) resolve on the objects' attributes, with the visible-mask centroid
for relations and the visible area for size, and margins (`_MARGIN`, `_SIZE_RATIO`) so that no
pair is borderline:
  attribute    `the red circle`, `the circle`, `the red shape`
  relational   `the red circle left of the blue square` (also right of, above, below)
  superlative  `the largest triangle`, `the smallest red shape`
  multi-target `all red shapes`, `all circles`, `all red circles` (mask = union)
  no-target    any of the forms above that denotes nothing (`the green star` when there is
               none, `the largest star`, `all stars`, `the red circle left of the blue square`
               when none is): an all-zero mask, answered with [REJ]; a gres no-target takes
               the form of a present expression drawn as the present ones are
Tasks: 'referring' (one expression per turn, LIRA's ILVC answer), 'gres' (GSVA answer over 1..max_targets
expressions, at least one present), 'gcg' (grounded caption of up to max_targets objects left to
right), 'attr' (yes/no: is there a <colour> <shape>?) and 'vqa' (colour/shape/count). Plain
image-text tasks for pre-training the InternVL side (no masks): 'caption' (every object, left to
right), 'what' (the colour or shape of a referred object the expression does not name) and
'where' (the 3 x 3 cell of a referred object's centroid, `top left` ... `bottom right`).

Sample i of split s uses the seed sequence (world_seed, split id, i): deterministic, and the
splits never share a scene stream.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import numpy as np
from PIL import Image, ImageDraw

import lira_jax  # noqa: F401  (project convention: imported first everywhere)
from lira_jax import lira_tokens
from lira_jax.data import encode
from lira_jax.tokens import IMAGE_PLACEHOLDER, TEMPLATES

COLOURS = {'red': (215, 40, 40), 'green': (40, 165, 60), 'blue': (45, 80, 215),
           'yellow': (230, 205, 40), 'purple': (145, 60, 185), 'orange': (240, 135, 30)}
SHAPES = ('circle', 'square', 'triangle', 'star', 'diamond')
RELATIONS = ('left of', 'right of', 'above', 'below')
SIDES = {'on the left': 'left', 'on the right': 'right', 'at the top': 'top',
         'at the bottom': 'bottom'}
NUMBERS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six')
SPLITS = {'train': 0, 'val': 1, 'test': 2}
TASKS = ('referring', 'gres', 'gcg', 'attr', 'vqa', 'caption', 'what', 'where')
CAPTION_QUESTION = 'Please describe the image in detail.'
ROWS, COLUMNS = ('top', 'middle', 'bottom'), ('left', 'center', 'right')
SYSTEM_MESSAGE = 'You are a helpful assistant.'
VQA_SUFFIX = ' Answer the question using a single word or phrase.'
GRES_QUESTION = 'Please segment {} in this image.'
GCG_QUESTION = ('Please describe the image in detail. Please respond with interleaved '
                'segmentation masks for the corresponding phrases.')
_MARGIN = 0.06  # of the image side: relations and sides need at least this centroid gap
_SIZE_RATIO = 1.3  # largest / smallest must beat the runner-up by this factor


@dataclasses.dataclass(frozen=True)
class Obj:
  shape: str
  colour: str
  size: float  # radius in pixels
  center: tuple[float, float]  # (y, x) where it was drawn
  mask: np.ndarray  # bool[H, W] visible pixels


@dataclasses.dataclass(frozen=True)
class Scene:
  image: np.ndarray  # u8[H, W, 3]
  objects: tuple[Obj, ...]

  # Cached: expression search asks for them thousands of times per scene.
  @functools.cached_property
  def _centroids(self) -> tuple[tuple[float, float], ...]:
    return tuple((float(ys.mean()), float(xs.mean()))
                 for ys, xs in (np.nonzero(o.mask) for o in self.objects))

  @functools.cached_property
  def _areas(self) -> tuple[int, ...]:
    return tuple(int(o.mask.sum()) for o in self.objects)

  def centroid(self, i: int) -> tuple[float, float]:
    return self._centroids[i]

  def area(self, i: int) -> int:
    return self._areas[i]


def _rng(seed_or_rng) -> np.random.Generator:
  return seed_or_rng if isinstance(seed_or_rng, np.random.Generator) else (
      np.random.default_rng(seed_or_rng))


def _polygon(shape: str, cy: float, cx: float, r: float, angle: float) -> list[tuple]:
  if shape == 'star':
    radii = [r if k % 2 == 0 else 0.45 * r for k in range(10)]
  else:
    radii = [r * (0.65 if shape == 'diamond' and k % 2 else 1.0)
             for k in range({'triangle': 3, 'square': 4, 'diamond': 4}[shape])]
  step = 2 * math.pi / len(radii)
  return [(cx + q * math.sin(angle + k * step), cy - q * math.cos(angle + k * step))
          for k, q in enumerate(radii)]


def _draw_mask(shape: str, cy: float, cx: float, r: float, angle: float, size: int) -> np.ndarray:
  canvas = Image.new('L', (size, size), 0)
  draw = ImageDraw.Draw(canvas)
  if shape == 'circle':
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1)
  else:
    draw.polygon(_polygon(shape, cy, cx, r, angle), fill=1)
  return np.asarray(canvas, bool)


def make_scene(seed_or_rng, size: int = 256, max_tries: int = 50) -> Scene:
  """A square scene of side `size` from an int seed or a numpy Generator (advanced in place)."""
  rng = _rng(seed_or_rng)
  base = rng.integers(90, 170) + rng.integers(-12, 13, size=3)
  image = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
  clutter = Image.new('L', (size, size), 0)
  draw = ImageDraw.Draw(clutter)
  for _ in range(int(rng.integers(8, 20))):  # grey strokes: texture that is never an object
    x0, y0, x1, y1 = rng.uniform(0, size, 4)
    draw.line((x0, y0, x1, y1), fill=int(rng.integers(1, 255)), width=int(rng.integers(1, 4)))
  strokes = np.asarray(clutter, np.float32)[..., None]
  image = np.where(strokes > 0, strokes * 0.5 + 60, image)

  drawn, full = [], []
  for _ in range(int(rng.integers(3, 7))):
    for _ in range(max_tries):
      shape = SHAPES[rng.integers(len(SHAPES))]
      colour = list(COLOURS)[rng.integers(len(COLOURS))]
      r = float(rng.uniform(0.07, 0.17) * size)
      cy, cx = rng.uniform(r, size - r, 2)
      angle = float(rng.uniform(-0.2, 0.2)) + (math.pi / 4 if shape == 'square' else 0.0)
      mask = _draw_mask(shape, cy, cx, r, angle, size)
      if all((m & ~mask).sum() >= 0.6 * m.sum() for m in full):
        drawn.append((shape, colour, r, (float(cy), float(cx))))
        full.append(mask)
        break
  visible = [m & ~np.any(full[k + 1:], axis=0) if k + 1 < len(full) else m
             for k, m in enumerate(full)]
  for (_, colour, _, _), mask in zip(drawn, full):  # integer values: float32 holds them exactly
    image[mask] = np.asarray(COLOURS[colour], np.float32) + rng.integers(-15, 16, size=3)
  image = image + rng.normal(0, 6, image.shape)
  objects = tuple(Obj(s, c, r, ctr, m) for (s, c, r, ctr), m in zip(drawn, visible))
  return Scene(np.clip(np.round(image), 0, 255).astype(np.uint8), objects)


# ---------------------------------------------------------------- expressions


def _matches(scene: Scene, colour: str | None, shape: str | None) -> list[int]:
  return [i for i, o in enumerate(scene.objects)
          if colour in (None, o.colour) and shape in (None, o.shape)]


def _noun(colour: str | None, shape: str | None, plural: bool = False) -> str:
  noun = (shape or 'shape') + ('s' if plural else '')
  return f'{colour} {noun}' if colour else noun


def relation(scene: Scene, a: int, b: int, rel: str) -> bool | None:
  """Whether object a is `rel` object b: True / False, None when within the margin."""
  (ay, ax), (by, bx) = scene.centroid(a), scene.centroid(b)
  gap = {'left of': bx - ax, 'right of': ax - bx, 'above': by - ay, 'below': ay - by}[rel]
  margin = _MARGIN * scene.image.shape[0]
  return True if gap > margin else False if gap < -margin else None


def _extreme(scene: Scene, cands: list[int], key, largest: bool) -> int | None:
  """The candidate with the largest (or smallest) key if it wins by _SIZE_RATIO, else None."""
  if len(cands) < 2:
    return None
  ranked = sorted(cands, key=key, reverse=largest)
  first, second = key(ranked[0]), key(ranked[1])
  wins = first >= _SIZE_RATIO * second if largest else _SIZE_RATIO * first <= second
  return ranked[0] if wins else None


def referring_expressions(scene: Scene) -> dict[str, list[str]]:
  """Every unambiguous single-target expression of the scene -> [text, ...] by kind
  ('attribute', 'relational', 'superlative'), each text resolving to one object."""
  out = {'attribute': [], 'relational': [], 'superlative': []}
  nouns = [(c, s) for c in (None, *COLOURS) for s in (None, *SHAPES) if c or s]
  for c, s in nouns:
    cands = _matches(scene, c, s)
    if len(cands) == 1:
      out['attribute'].append((f'the {_noun(c, s)}', cands[0]))
    for word, largest in (('largest', True), ('smallest', False)):
      best = _extreme(scene, cands, scene.area, largest)
      if best is not None:
        out['superlative'].append((f'the {word} {_noun(c, s)}', best))
  # Relational: a full-attribute target noun with a unique full-attribute anchor.
  full = {(c, s): _matches(scene, c, s) for c, s in nouns if c and s}
  for ((c, s), cands), ((c2, s2), anchors) in itertools.product(full.items(), full.items()):
    if len(anchors) != 1 or anchors[0] in cands or not cands:
      continue
    for rel in RELATIONS:
      truth = [relation(scene, i, anchors[0], rel) for i in cands]
      if truth.count(True) == 1 and truth.count(None) == 0:
        out['relational'].append((f'the {_noun(c, s)} {rel} the {_noun(c2, s2)}',
                                  cands[truth.index(True)]))
  return out


def expression_kind(text: str) -> str:
  """'relational', 'superlative' or 'attribute' for a single-target expression of this world."""
  if any(f' {rel} the ' in text for rel in RELATIONS):
    return 'relational'
  return 'superlative' if text.split()[1] in ('largest', 'smallest') else 'attribute'


def shares_colour(scene: Scene, i: int) -> bool:
  """Whether another object of the scene has object i's colour."""
  return any(o.colour == scene.objects[i].colour for k, o in enumerate(scene.objects) if k != i)


def multi_target_expressions(scene: Scene) -> list[tuple[str, list[int]]]:
  """`all <noun>` for every noun matching two or more objects."""
  return [(f'all {_noun(c, s, plural=True)}', m)
          for c in (None, *COLOURS) for s in (None, *SHAPES)
          if (c or s) and len(m := _matches(scene, c, s)) >= 2]


def _noun_words(text: str, kind: str) -> list[str]:
  """The words of the target's noun, singular (`red circle`, `circle`, `red shape`)."""
  words = text.split()
  noun = words[1:3] if kind == 'relational' else words[-2:]
  return [w[:-1] if w.endswith('s') and w[:-1] in (*SHAPES, 'shape') else w for w in noun]


def expression_form(text: str) -> tuple[str, str]:
  """(kind, named): kind is 'all' for `all <noun>`, else expression_kind's; named is which of
  colour 'c' and shape 's' the target's noun gives ('c', 's' or 'cs')."""
  kind = 'all' if text.startswith('all ') else expression_kind(text)
  noun = set(_noun_words(text, kind))
  return kind, ('c' if noun & set(COLOURS) else '') + ('s' if noun & set(SHAPES) else '')


def absent_expressions(scene: Scene) -> list[str]:
  """Every expression of the forms that denote objects (attribute, superlative, `all`,
  relational) that denotes none here: its noun matches no object, or (relational) no object of
  it lies clearly on that side of a unique anchor."""
  return [text for text, _ in _absent_with_forms(scene)]


def _absent_with_forms(scene: Scene) -> list[tuple[str, tuple[str, str]]]:
  """absent_expressions with each one's expression_form, known from how it is built (parsing
  every one back was a third of a GRES sample's generation time)."""
  nouns = [(c, s) for c in (None, *COLOURS) for s in (None, *SHAPES) if c or s]
  out = []
  for c, s in nouns:
    if not _matches(scene, c, s):
      named = ('c' if c else '') + ('s' if s else '')
      out += [(f'the {_noun(c, s)}', ('attribute', named)),
              (f'the largest {_noun(c, s)}', ('superlative', named)),
              (f'the smallest {_noun(c, s)}', ('superlative', named)),
              (f'all {_noun(c, s, plural=True)}', ('all', named))]
  full = {(c, s): _matches(scene, c, s) for c, s in nouns if c and s}
  for ((c, s), cands), ((c2, s2), anchors) in itertools.product(full.items(), full.items()):
    if len(anchors) != 1 or anchors[0] in cands:
      continue
    for rel in RELATIONS:
      if all(relation(scene, i, anchors[0], rel) is False for i in cands):
        out.append((f'the {_noun(c, s)} {rel} the {_noun(c2, s2)}', ('relational', 'cs')))
  return out


def side_object(scene: Scene, side: str) -> int | None:
  """The object clearly nearest to `side` ('left', 'right', 'top', 'bottom'), if any."""
  axis, sign = {'left': (1, -1), 'right': (1, 1), 'top': (0, -1), 'bottom': (0, 1)}[side]
  coord = [sign * scene.centroid(i)[axis] for i in range(len(scene.objects))]
  order = np.argsort(coord)[::-1]
  if len(order) > 1 and coord[order[0]] - coord[order[1]] < _MARGIN * scene.image.shape[0]:
    return None
  return int(order[0])


# ---------------------------------------------------------------- samples


@dataclasses.dataclass(frozen=True)
class Sample:
  scene: Scene
  task: str
  question: str  # first user turn, starting with `<image>\n`
  answer: str  # the ILVC form for referring / gcg (strip_ilvc gives the other)
  expressions: tuple[str, ...]  # the text of each target, in answer order over all turns
  targets: tuple[tuple[int, ...], ...]  # object indices of each target (empty: no target)
  followups: tuple[tuple[str, str], ...] = ()  # later (user, answer) turns on the same image

  @property
  def turns(self) -> tuple[tuple[str, str], ...]:
    return ((self.question, self.answer), *self.followups)

  @property
  def masks(self) -> np.ndarray:
    """bool[K, H, W]: target k = union of its objects' masks (all zero for [REJ])."""
    h, w = self.scene.image.shape[:2]
    out = np.zeros((len(self.targets), h, w), bool)
    for k, t in enumerate(self.targets):
      for i in t:
        out[k] |= self.scene.objects[i].mask
    return out


def sample_rng(split: str, index: int, world_seed: int = 0) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([world_seed, SPLITS[split], index]))


def _pick(rng, items):
  return items[rng.integers(len(items))]


def _referring(scene, rng, opts):
  """Up to `rounds` turns, each a different expression (LISA asks several per image: more
  [SEG] supervision per encoded scene); later turns prefer objects not yet referred to."""
  pools = [v for v in referring_expressions(scene).values() if v]
  if not pools:
    return None
  text, obj = _pick(rng, _pick(rng, pools))
  chosen = [(text, obj)]
  others = [(t, i) for pool in pools for t, i in pool if t != text]
  for _ in range(opts.referring_rounds - 1):
    fresh = [c for c in others if c[1] not in {i for _, i in chosen}] or others
    if not fresh:
      break
    chosen.append(_pick(rng, fresh))
    others.remove(chosen[-1])
  turns = [(lira_tokens.referring_question(t), lira_tokens.referring_answer(t)) for t, _ in chosen]
  return turns, tuple(t for t, _ in chosen), tuple((i,) for _, i in chosen)


def _gres(scene, rng, opts):
  singles = [(t, [i]) for pool in referring_expressions(scene).values() for t, i in pool]
  present = singles + multi_target_expressions(scene)
  with_forms = _absent_with_forms(scene)
  every_absent = [text for text, _ in with_forms]
  absent = {}
  for text, form in with_forms:
    absent.setdefault(form, []).append(text)

  def absent_like(text):
    """An absent expression of the form of `text`, so that the wording alone (the leak fixed in
    session 22: all absent ones were `the <colour> <shape>`) does not tell absent from present."""
    return _pick(rng, absent.get(expression_form(text)) or every_absent)

  n = int(rng.integers(1, opts.max_targets + 1))
  first = _pick(rng, present)
  rest = [_pick(rng, present) if rng.random() < 1 - opts.absent_rate else
          (absent_like(_pick(rng, present)[0]), []) for _ in range(n - 1)]
  chosen = [first, *rest]
  rng.shuffle(chosen)
  texts = tuple(t for t, _ in chosen)
  answer = lira_tokens.gres_answer([(t, bool(i)) for t, i in chosen], int(rng.integers(5)))
  return ([(GRES_QUESTION.format(', '.join(texts)), answer)], texts,
          tuple(tuple(i) for _, i in chosen))


def _indefinite(noun: str) -> str:
  return ('an ' if noun[0] in 'aeiou' else 'a ') + noun


def _gcg(scene, rng, opts):
  by_area = sorted(range(len(scene.objects)), key=scene.area, reverse=True)[:opts.max_targets]
  objs = sorted(by_area, key=lambda i: scene.centroid(i)[1])
  phrases = [_indefinite(f'{scene.objects[i].colour} {scene.objects[i].shape}') for i in objs]
  caption, spans = 'The image shows ', []
  for k, phrase in enumerate(phrases):
    caption += '' if k == 0 else ' and ' if k == len(phrases) - 1 else ', '
    spans.append((len(caption), len(caption) + len(phrase)))
    caption += phrase
  answer = lira_tokens.gcg_answer(caption + '.', spans)
  return [(GCG_QUESTION, answer)], tuple(phrases), tuple((i,) for i in objs)


def _attr(scene, rng, opts):
  colour, shape = _pick(rng, list(COLOURS)), _pick(rng, SHAPES)
  if rng.random() < 0.5:  # balance yes / no
    obj = scene.objects[rng.integers(len(scene.objects))]
    colour, shape = obj.colour, obj.shape
  answer = 'yes' if _matches(scene, colour, shape) else 'no'
  question = f'Is there {_indefinite(f"{colour} {shape}")} in the image?'
  return [(question + VQA_SUFFIX, answer)], (), ()


def _caption(scene, rng, opts):
  objs = sorted(range(len(scene.objects)), key=lambda i: scene.centroid(i)[1])
  phrases = [_indefinite(f'{scene.objects[i].colour} {scene.objects[i].shape}') for i in objs]
  listed = ', '.join(phrases[:-1]) + ' and ' + phrases[-1] if len(phrases) > 1 else phrases[0]
  return [(CAPTION_QUESTION, f'The image shows {listed}.')], (), ()


def _referred(scene, rng) -> tuple[str, int] | None:
  """A random single-target expression (kind first, as the referring task draws) and its object."""
  pools = [v for v in referring_expressions(scene).values() if v]
  return _pick(rng, _pick(rng, pools)) if pools else None


def _where_turn(scene, text: str, i: int):
  cy, cx = scene.centroid(i)
  size = scene.image.shape[0]
  cell = f'{ROWS[min(2, int(3 * cy / size))]} {COLUMNS[min(2, int(3 * cx / size))]}'
  return [(f'Where is {text}?' + VQA_SUFFIX, cell)], (), ()


def _what(scene, rng, opts):
  """Asks an attribute the expression leaves out; an expression naming both asks `where`."""
  if (referred := _referred(scene, rng)) is None:
    return None
  text, i = referred
  obj, words = scene.objects[i], text.split()
  for what in ('colour', 'shape'):
    if getattr(obj, what) not in words:
      return [(f'What {what} is {text}?' + VQA_SUFFIX, getattr(obj, what))], (), ()
  return _where_turn(scene, text, i)


def _where(scene, rng, opts):
  referred = _referred(scene, rng)
  return None if referred is None else _where_turn(scene, *referred)


def _vqa(scene, rng, opts):
  sides = [(p, i) for p, s in SIDES.items() if (i := side_object(scene, s)) is not None]
  if sides and rng.random() < 0.5:
    phrase, i = _pick(rng, sides)
    what = _pick(rng, ('colour', 'shape'))
    question = f'What {what} is the shape {phrase}?'
    answer = getattr(scene.objects[i], what)
  else:
    shape = _pick(rng, SHAPES)
    question, answer = f'How many {shape}s are there?', NUMBERS[len(_matches(scene, None, shape))]
  return [(question + VQA_SUFFIX, answer)], (), ()


@dataclasses.dataclass(frozen=True)
class TaskOptions:
  max_targets: int = 2  # gres expressions and gcg phrases per sample
  referring_rounds: int = 1  # referring turns per sample
  absent_rate: float = 0.5  # chance that a gres expression after the first has no target


_TASK_FNS = dict(referring=_referring, gres=_gres, gcg=_gcg, attr=_attr, vqa=_vqa,
                 caption=_caption, what=_what, where=_where)


def make_sample(split: str, index: int, *, task: str | None = None, size: int = 256,
                max_targets: int = 2, world_seed: int = 0,
                task_weights: dict[str, float] | None = None, referring_rounds: int = 1,
                absent_rate: float = 0.5) -> Sample:
  """Sample `index` of `split`. task None draws one by task_weights (default: referring and gres
  0.35 each, the others 0.1). max_targets bounds gres expressions and gcg phrases (keep it
  <= cfg.seq.max_regions for ILVC gcg and <= cfg.seq.max_seg); referring samples ask
  referring_rounds expressions in as many turns (each ILVC answer takes a region slot and two
  [SEG] slots); absent_rate: see TaskOptions."""
  opts = TaskOptions(max_targets, referring_rounds, absent_rate)
  rng = sample_rng(split, index, world_seed)
  weights = task_weights or dict(referring=0.35, gres=0.35, gcg=0.1, attr=0.1, vqa=0.1)
  names = list(weights)
  p = np.asarray([weights[n] for n in names], np.float64)
  chosen = task or names[rng.choice(len(names), p=p / p.sum())]
  made = None
  while made is None:  # a scene without any unambiguous expression is redrawn
    scene = make_scene(rng, size)
    made = _TASK_FNS[chosen](scene, rng, opts)
  turns, texts, targets = made
  (question, answer), *followups = turns
  return Sample(scene, chosen, IMAGE_PLACEHOLDER + '\n' + question, answer, texts, targets,
                tuple(followups))


def vocabulary_texts() -> list[str]:
  """Every fixed string the world's texts are made of (for the tokenizer's word list)."""
  t = TEMPLATES['internlm2-chat']
  return [*COLOURS, *SHAPES, *(s + 's' for s in SHAPES), *RELATIONS, *SIDES, *NUMBERS,
          'the all a an shape shapes largest smallest yes no and is there in',
          *ROWS, *COLUMNS, 'Where', CAPTION_QUESTION,
          'What colour shape How many are there', 'Is there in the image The image shows',
          SYSTEM_MESSAGE, VQA_SUFFIX, GRES_QUESTION, GCG_QUESTION,
          lira_tokens.referring_question(''), t.system_template, *t.roles,
          *(' '.join(f) for f in lira_tokens.GRES_ANSWER_FORMATS)]


# ---------------------------------------------------------------- LIRA batch elements


def noun_ids(texts, k: int) -> np.ndarray:
  """i32[k, 2]: (colour, shape) index of the noun each target text names (a referring or gres
  expression, a gcg phrase); len(COLOURS) / len(SHAPES) where it leaves that attribute open, -1
  past the texts."""
  out = np.full((k, 2), -1, np.int32)
  colours = list(COLOURS)
  for j, text in enumerate(texts[:k]):
    noun = _noun_words(text, expression_kind(text))
    out[j] = (next((colours.index(w) for w in noun if w in COLOURS), len(COLOURS)),
              next((SHAPES.index(w) for w in noun if w in SHAPES), len(SHAPES)))
  return out


def encode_sample(sample: Sample, tokenizer, cfg, *, ilvc: bool) -> dict[str, np.ndarray]:
  """One LIRA batch element of a synthetic sample (lira_jax.data.encode.encode_example), plus
  gt_noun (noun_ids of its targets)."""
  out = encode.encode_example(Image.fromarray(sample.scene.image), sample.turns, sample.masks,
                              tokenizer, cfg, ilvc=ilvc, system_message=SYSTEM_MESSAGE)
  return dict(out, gt_noun=noun_ids(sample.expressions, cfg.seq.max_seg))
