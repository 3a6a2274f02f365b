"""`python -m lira_jax`: segment writes its three outputs from a training checkpoint, clear errors
for unreadable images and over-long prompts, and the generation benchmarks give the same metrics
at batch 1 and 8."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import lira_jax  # noqa: F401
from configs.common import stage_config
from lira_jax import cli, sharding
from lira_jax.data import synthetic
from lira_jax.train import sharded_step
from lira_jax.train.checkpoint import Checkpointer

CONFIG = 'configs/tiny_synthetic.py:smoke'


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A launch.train-style workdir whose stage2 holds a freshly initialised checkpoint."""
  root = tmp_path_factory.mktemp('run')
  cfg = stage_config(CONFIG, 2)
  _, state, _ = sharded_step.build_train_state(cfg, sharding.make_mesh(dict(cfg.mesh)))
  ckpt = Checkpointer(str(root / 'stage2'))
  ckpt.save(1, state, {}, force=True)
  ckpt.wait()
  ckpt.close()
  return root


@pytest.fixture(scope='module')
def image_path(tmp_path_factory):
  path = tmp_path_factory.mktemp('img') / 'scene.png'
  Image.fromarray(synthetic.make_sample('val', 0, size=128).scene.image).save(path)
  return path


@pytest.mark.slow
def test_segment_writes_masks_overlay_and_rle(workdir, image_path, tmp_path, capsys):
  out = tmp_path / 'seg'
  rc = cli.main(['segment', str(image_path), 'Please segment the red circle.', '--ckpt',
                 str(workdir), '--config', CONFIG, '--out', str(out), '--max-new-tokens', '8'])
  assert rc == 0
  record = json.loads((out / 'masks.json').read_text())
  assert set(record) == {'text', 'targets'}
  assert (out / 'overlay.png').is_file()
  for k, target in enumerate(record['targets']):
    mask = np.asarray(Image.open(out / f'mask_{k}.png')) > 0
    assert mask.shape == (128, 128)
    assert target['segmentation']['size'] == [128, 128]
  assert str(out / 'masks.json') in capsys.readouterr().out


def test_unreadable_image_is_a_clear_error(tmp_path, capsys):
  bad = tmp_path / 'broken.png'
  bad.write_bytes(b'not a png')  # read before any checkpoint is opened
  rc = cli.main(['segment', str(bad), 'x', '--ckpt', str(tmp_path), '--config', CONFIG])
  assert rc == 2
  assert f"cannot read image '{bad}'" in capsys.readouterr().err


@pytest.mark.slow
def test_prompt_over_the_context_is_a_clear_error(workdir, image_path, capsys):
  long = 'the red circle ' * 200
  rc = cli.main(['segment', str(image_path), long, '--ckpt', str(workdir), '--config', CONFIG])
  assert rc == 2
  assert 'context holds' in capsys.readouterr().err


def test_missing_checkpoint_is_a_clear_error(image_path, tmp_path, capsys):
  rc = cli.main(['segment', str(image_path), 'x', '--ckpt', str(tmp_path), '--config', CONFIG])
  assert rc == 2
  assert 'holds no checkpoints' in capsys.readouterr().err


@pytest.mark.slow
def test_eval_metrics_identical_at_batch_1_and_8(workdir, tmp_path):
  got = {}
  for b in (1, 8):
    out = tmp_path / f'b{b}'
    rc = cli.main(['eval', '--ckpt', str(workdir), '--config', CONFIG, '--out', str(out),
                   '--batch-size', str(b), '--count', '3', '--max-new-tokens', '12',
                   '--caption-metrics', 'CIDEr'])
    assert rc == 0
    got[b] = (json.loads((out / 'metrics.json').read_text()),
              (out / 'samples.jsonl').read_text().splitlines())
  assert got[1][0] == got[8][0]
  assert got[1][1] == got[8][1]
  assert {json.loads(r)['benchmark'] for r in got[1][1]} >= {
      'res', 'gres_rej', 'gres_first', 'gcg', 'vqa', 'pope', 'attr_yes_no'}
  assert os.path.getsize(tmp_path / 'b1' / 'metrics.json') > 0
