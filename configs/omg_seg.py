"""OMG-Seg pixel path as LIRA uses it: ConvNeXt-L CLIP (convnext_large_d_320) at 1024² + the
Mask2Former-style panoptic head (MSDeformAttn pixel decoder, masked-attention decoder).

Arg 'tiny': the sizes of ../shared/golden/omg_seg_head_tiny (with a tiny backbone added).
"""
import ml_collections


def omg_seg_config(*, dims, depths, image_size, feat_channels, num_queries, gn_groups,
                   enc_layers, enc_heads, enc_points, enc_ffn, dec_layers, dec_heads, dec_ffn,
                   num_things, num_stuff, ov_dim, ov_protos, num_levels=3,
                   logit_scale_log=4.6052, pixel_shuffle_down_ratio=2):
  c = ml_collections.ConfigDict()
  c.backbone = ml_collections.ConfigDict(dict(
      dims=tuple(dims), depths=tuple(depths), stem_patch=4, kernel_size=7, norm_eps=1e-6,
      head_dim=768))  # head_dim: CLIP image head output (unused by LIRA, kept for conversion)
  c.head = ml_collections.ConfigDict(dict(
      in_channels=tuple(dims), strides=(4, 8, 16, 32), feat_channels=feat_channels,
      num_queries=num_queries, num_levels=num_levels, gn_groups=gn_groups,
      enc_layers=enc_layers, enc_heads=enc_heads, enc_points=enc_points, enc_ffn=enc_ffn,
      dec_layers=dec_layers, dec_heads=dec_heads, dec_ffn=dec_ffn,
      num_things=num_things, num_stuff=num_stuff, ov_dim=ov_dim, ov_protos=ov_protos,
      logit_scale_log=logit_scale_log, pixel_shuffle_down_ratio=pixel_shuffle_down_ratio))
  c.image_size = image_size
  # Pad colour = int(255 * mean) and the 4-decimal CLIP constants used by LIRA's processor.
  c.pixel_mean = (0.4814, 0.4578, 0.4082)
  c.pixel_std = (0.2686, 0.2613, 0.2757)
  c.pad_color = (122, 116, 104)
  return c


def get_config(arg=None):
  if arg == 'tiny':
    return omg_seg_config(
        dims=(8, 16, 24, 32), depths=(1, 1, 2, 1), image_size=256, feat_channels=32,
        num_queries=12, gn_groups=8, enc_layers=2, enc_heads=4, enc_points=2, enc_ffn=64,
        dec_layers=4, dec_heads=4, dec_ffn=64, num_things=3, num_stuff=2, ov_dim=16, ov_protos=2)
  if arg not in (None, ''):
    raise ValueError(f'unknown config arg {arg!r} (expected none or "tiny")')
  # ov_protos (P, text prototypes per class) comes from the separate OV class-embedding file.
  return omg_seg_config(
      dims=(192, 384, 768, 1536), depths=(3, 3, 27, 3), image_size=1024, feat_channels=256,
      num_queries=300, gn_groups=32, enc_layers=6, enc_heads=8, enc_points=4, enc_ffn=1024,
      dec_layers=9, dec_heads=8, dec_ffn=2048, num_things=80, num_stuff=53, ov_dim=768,
      ov_protos=1)
