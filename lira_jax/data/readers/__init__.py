"""Readers of the real datasets as grain random-access sources (`__len__` / `__getitem__`), all
yielding example.Example (image path, (user, answer) turns in LIRA's training formats, COCO RLE
target masks, free-form meta):

  coco_refs       RefCOCO / RefCOCO+ / RefCOCOg: refs(unc|umd).p + instances.json (referring)
  grefcoco        gRefCOCO: grefs(unc).json + instances.json (GSVA [SEG] / [REJ] conversations,
                  teacher-forced image-level eval items, single-expression items)
  gcg             GranD-f / OpenPSG GCG json and RefCOCOg-GCG json (grounded captions, ILVC form)
  llava           LLaVA / InternVL conversation json or jsonl (plain comprehension turns)
  eval_files      POPE, CHAIR and AttrEval (refcoco_attri) evaluation files
  attr_from_refs  AttrEval-style yes/no pairs and [SEG]-probe items derived from RefCOCO refs
  mixture         per-source repeats / weights mixture, and SkippingSource (bad records skipped
                  and counted)
"""
