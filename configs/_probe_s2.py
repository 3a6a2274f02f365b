from configs import tiny_synthetic as base
def get_config(arg=None):
  c = base.get_config(arg)
  if c.stage == 2:
    c.train.steps = 1200
  return c
