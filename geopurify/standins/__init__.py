"""OFFLINE STAND-INS: what replaces, here, the data and models that cannot be had offline.

- `rooms`: procedural indoor rooms, the embedded default data set (for ScanNet scans), also in
  ScanNet's and Matterport3D's release formats (`geopurify synth`);
- `simulated_vlm`: a simulated 2D vision-language model deriving degraded features from labels
  (for CLIP / LSeg / X-Decoder);
- `geometric_teacher`: a hand-crafted per-point descriptor (for the Sonata teacher).

Every output made with one says so (names, flags, log lines, reports). The real pipeline never
imports this package: it reaches the stand-ins only through the registries that also name the
real backends (`lift.vlm: simulated` in geopurify.vlm, `teacher.name: geometric` in
geopurify.teacher, `data.dataset: synthetic` in geopurify.data.splits; `geopurify synth` in
geopurify.cli.synth), so the import contracts can check that nothing else depends on them.
"""
