"""Session 25: is the region classifier (lira_jax/models/region_classify.py) under-trained?
collect: the labelled query crops (IoU >= 0.5 with an object, as region_class_loss labels them)
of a stage-2 checkpoint's frozen pixel path on train and val scenes, saved to OUT.npz, and the
checkpoint's own classifier's val shape accuracy. train: a fresh classifier trained offline on
them (batches of 63 crops, AdamW, warmup + cosine), its val shape accuracy. Usage (repo root):
  python diagnostics/s25_region_classifier_offline.py collect STAGE2_DIR TRAIN_SCENES VAL_SCENES CROP OUT.npz
  python diagnostics/s25_region_classifier_offline.py train OUT.npz CROP CHANNELS STEPS [LR]"""
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from lira_jax import cli
from lira_jax.data import encode, synthetic, synthetic_panoptic
from lira_jax.models.region_classify import RegionClassifier, region_crops
from lira_jax.nn.layers import conv3x3_same, gelu_exact

SHAPES = len(synthetic.SHAPES)


def collect(ckpt, train_scenes, val_scenes, crop, out):
  cfg, _, graphdef, states = cli.load_model('configs/tiny_synthetic.py', ckpt)
  side = cfg.data.image_size

  @jax.jit
  def run(states, pixels, pan_masks, pan_valid, pan_classes):
    model = nnx.merge(graphdef, *states)
    omg = model.omg(pixels, max_valid=model.max_queries)
    logits = omg.decoder.mask_logits[-1]
    pred = logits > 0
    gt = (pan_masks > 0.5) & pan_valid[..., None, None]
    inter = jnp.einsum('bqhw,bohw->bqo', pred.astype(jnp.float32), gt.astype(jnp.float32))
    union = pred.sum((-2, -1))[..., None] + gt.sum((-2, -1))[:, None, :] - inter
    iou = jnp.where(pan_valid[:, None, :], inter / jnp.maximum(union, 1.0), 0.0)
    labelled = jnp.max(iou, -1) >= 0.5
    classes = jnp.take_along_axis(pan_classes, jnp.argmax(iou, -1), axis=1)
    own_shape = jnp.argmax(model.region_classes(omg, pixels)[1], -1)
    return region_crops(pixels, logits, crop), classes, labelled, own_shape

  def split(name, count):
    crops, classes, own_right = [], [], []
    for start in range(0, count, 8):
      if name == 'train':  # a stretch of the train stream no stage draws
        scenes = [synthetic.make_scene(synthetic.sample_rng('train', 10**8 + i), side)
                  for i in range(start, start + 8)]
      else:
        scenes = [synthetic.make_sample('val', i, size=side).scene for i in range(start, start + 8)]
      b = encode.collate([synthetic_panoptic.encode_panoptic(s, cfg) for s in scenes])
      x, y, keep, own = jax.device_get(run(states, *(jnp.asarray(b[k]) for k in (
          'pixels', 'pan_masks', 'pan_valid', 'pan_classes'))))
      crops.append(x[keep].astype(np.float16))
      classes.append(y[keep])
      own_right.append(own[keep] == y[keep] % SHAPES)
    return np.concatenate(crops), np.concatenate(classes), np.concatenate(own_right)

  xv, yv, own = split('val', val_scenes)
  print(f'{len(yv)} val crops; the checkpoint\'s classifier names the shape of {own.mean():.4f}')
  xt, yt, _ = split('train', train_scenes)
  print(f'{len(yt)} train crops')
  np.savez(out, Xt=xt, Yt=yt, Xv=xv, Yv=yv)


def train(data, crop, channels, steps, lr=2e-3):
  d = np.load(data)
  xt, yt, xv, yv = d['Xt'].astype(np.float32), d['Yt'], d['Xv'].astype(np.float32), d['Yv']
  model = RegionClassifier(ml_collections.ConfigDict(dict(crop=crop, channels=channels)),
                           (len(synthetic.COLOURS), SHAPES), rngs=nnx.Rngs(0))

  def logits(model, x):  # RegionClassifier.__call__ after region_crops
    for conv in model.convs:
      x = gelu_exact(conv3x3_same(conv, x))
      n, k = x.shape[0], x.shape[1]
      x = x.reshape(n, k // 2, 2, k // 2, 2, x.shape[-1]).mean((2, 4))
    x = x.reshape(x.shape[0], -1)
    return model.colour_head(x), model.shape_head(x)

  schedule = optax.warmup_cosine_decay_schedule(lr * 0.01, lr, steps // 20, steps)
  opt = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=0.0), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, x, y):
    def loss(model):
      colour, shape = logits(model, x)
      return (optax.softmax_cross_entropy_with_integer_labels(colour, y // SHAPES).mean()
              + optax.softmax_cross_entropy_with_integer_labels(shape, y % SHAPES).mean())
    value, grads = nnx.value_and_grad(loss)(model)
    opt.update(model, grads)
    return value

  predict = nnx.jit(lambda model, x: jnp.argmax(logits(model, x)[1], -1))
  rng = np.random.default_rng(0)
  began = time.time()
  for _ in range(steps):
    pick = rng.integers(0, len(yt), 63)
    value = step(model, opt, jnp.asarray(xt[pick]), jnp.asarray(yt[pick]))
  shape = np.concatenate([np.asarray(predict(model, jnp.asarray(xv[i:i + 500])))
                          for i in range(0, len(yv), 500)])
  print(f'crop {crop} channels {channels} steps {steps} lr {lr}: final loss {float(value):.3f} '
        f'val shape accuracy {np.mean(shape == yv % SHAPES):.4f} ({time.time() - began:.0f} s)')


if __name__ == '__main__':
  mode, args = sys.argv[1], sys.argv[2:]
  if mode == 'collect':
    collect(args[0], int(args[1]), int(args[2]), int(args[3]), args[4])
  else:
    train(args[0], int(args[1]), int(args[2]), int(args[3]), *(float(a) for a in args[4:]))
