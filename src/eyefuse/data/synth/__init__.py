"""Synthetic ODIR-format dataset: fundus-like photographs with drawn disease signs, for tests and demos.

`synthesize` writes a folder that the ODIR readers load like the real challenge release::

    OUT/ODIR-5K_Training_Annotations(Updated)_V2.xlsx        training patients (IDs 0 .. n-1)
    OUT/ODIR-5K_Training_Dataset/{ID}_left.jpg, {ID}_right.jpg
    OUT/Off-site Test Set/Annotation/off-site test annotation (English).xlsx   (IDs from 10000)
    OUT/Off-site Test Set/Images/{ID}_left.jpg, {ID}_right.jpg
    OUT/masks/{ID}_left.png, {ID}_right.png                 lesion masks (see below)
    OUT/synth_fov.csv                                       drawn field-of-view circle of every photograph
    OUT/SYNTHETIC.json                                      marker + generator settings

Both annotation files have the 15 ODIR columns; keywords use the ODIR vocabulary joined by the
full-width comma U+FF0C, and the patient labels follow the ODIR rule (N only when both eyes are
"normal fundus", otherwise the union of the two eyes' disease labels).

Orientation: photographs are drawn as the examiner sees the fundus, like the real data, so the
optic disc (nasal side) is on the viewer's RIGHT in a right-eye photograph and on the LEFT in a
left-eye photograph; the macula lies about 2.5 disc diameters temporal to the disc.

Masks: single-channel uint8 PNGs of the photograph's size. Bit i (value ``1 << i``) is set where a
sign of label ``ODIR_LABELS[i]`` (order N D G C A H M O) was drawn, so bit 0 (N) is never used;
D = 2, G = 4, C = 8 (the whole field of view: the lens lies in front of all of it), A = 16,
H = 32 (the narrowed arteries and nicked veins), M = 64, O = 128. Normal eyes, lens dust, haze and
"low image quality" set no bit.

Cameras: the resolutions of ODIR's cameras (2976x2976, 2592x1728, 1936x1296, 1444x1444, ...), some
with a circle taller than the frame (cut off at top and bottom), black or dark-grey borders, some
with a small notch in the circle. They are scaled down proportionally to `max_side` pixels on the
longer side. The default (`DEFAULT_MAX_SIDE` = 768) draws a photograph in about 40 ms of one core,
so a 300 + 60 patient set takes well under a minute on two cores, and every field of view is still
about 500 px or more across, larger than the 448 px model input. `max_side=0` draws at the full
camera resolution (slow; useful to exercise reduced-scale decoding).

Signs are drawn at sizes relative to the field of view (the smallest, microaneurysms, are at least
1/150 of its diameter, so they survive resizing to ~192 px), with nuisance variation that a model
must see past: fundus pigmentation, exposure, colour cast, vignetting, gamma, sensor noise, JPEG
quality 85-95, a few degrees of rotation, FOV scale and offset, lens dust.

No global trait gives a label away (`benchmarks/bench_shortcuts.py` measures it): the continuous
parameters that differ between healthy and diseased eyes overlap as in real eyes (`EyeParameters`:
cup-to-disc ratio, artery-to-vein ratio, tortuosity), and the confounders of real photographs are
drawn in eyes without the disease: haze and blur in most eyes, with the same distribution in
cataract eyes as in others (age, small pupil, defocus; strong in "low image quality" photographs,
which may also show a small pupil's dark crescent), eyelash shadows as dark and as many as a
cataract's spokes in most eyes without one, tessellation as common and as strong in healthy eyes as
in pathological myopia, peripapillary atrophy, nerve-fibre sheen, disc sizes that vary. What
decides a label is a local sign: narrow dark lens spokes and vacuoles for C, a vertically oval cup
and disc haemorrhages for G, nicking, flame haemorrhages and cotton-wool spots near the disc for H,
pigment clumps, atrophy or a membrane with the drusen for A (isolated drusen, as many, are O, as in
ODIR), atrophy patches and a tilted disc for M. O has eight conditions. The pictures show the
machinery works; they are not a model of real photographs, and figures on them say nothing about
accuracy on real ones.

Determinism: every patient is drawn from its own numpy Generator seeded with (seed, patient ID), so
patients are independent, can be drawn by any number of worker processes, and the same seed gives
the same annotation content and byte-identical JPEG/PNG files. Disease categories are dealt in
shuffled blocks of 20 consecutive IDs so that every label occurs at least about 5 % of the time
even in a 300-patient demo set.

The package draws in stages, one module each: `canvas` (coordinates, drawing primitives, the
camera's light, haze, dust and frame), `anatomy` (background, macula, disc and cup, vessels),
`lesions` (the signs of each label), `plan` (keywords, per-eye parameters, patients), `render` (one
eye's photograph, the stages in order) and `write` (`synthesize`: files on disk). Each imports only
the ones before it; this module re-exports the public names.
"""

from __future__ import annotations

from eyefuse.data.synth.anatomy import (
    fundus_color,
)
from eyefuse.data.synth.canvas import (
    CAMERAS,
    LABEL_BIT,
    Camera,
    FieldOfView,
)
from eyefuse.data.synth.plan import (
    DISEASE_KEYWORDS,
    KEYWORD_LABEL,
    MIXES,
    NON_DECIDING_KEYWORDS,
    NORMAL_KEYWORD,
    P_ONE_EYE,
    P_SECOND_DISEASE,
    EyeParameters,
    EyePlan,
    PatientPlan,
    choose_keywords,
    draw_eye_parameters,
    plan_patient,
)
from eyefuse.data.synth.render import (
    RenderedEye,
    render_eye,
)
from eyefuse.data.synth.write import (
    COLUMNS,
    DEFAULT_MAX_SIDE,
    FOV_CSV,
    KEYWORD_SEPARATOR,
    MARKER,
    MASKS,
    MIN_SIDE,
    TEST_ANNOTATION,
    TEST_ID_START,
    TEST_IMAGES,
    TRAIN_ANNOTATION,
    TRAIN_IMAGES,
    SynthImage,
    SynthSummary,
    synthesize,
)

__all__ = [
    "CAMERAS",
    "COLUMNS",
    "DEFAULT_MAX_SIDE",
    "DISEASE_KEYWORDS",
    "FOV_CSV",
    "KEYWORD_LABEL",
    "KEYWORD_SEPARATOR",
    "LABEL_BIT",
    "MARKER",
    "MASKS",
    "MIN_SIDE",
    "MIXES",
    "NON_DECIDING_KEYWORDS",
    "NORMAL_KEYWORD",
    "P_ONE_EYE",
    "P_SECOND_DISEASE",
    "TEST_ANNOTATION",
    "TEST_ID_START",
    "TEST_IMAGES",
    "TRAIN_ANNOTATION",
    "TRAIN_IMAGES",
    "Camera",
    "EyeParameters",
    "EyePlan",
    "FieldOfView",
    "PatientPlan",
    "RenderedEye",
    "SynthImage",
    "SynthSummary",
    "choose_keywords",
    "draw_eye_parameters",
    "fundus_color",
    "plan_patient",
    "render_eye",
    "synthesize",
]
