"""The organs of a synthetic abdomen, drawn per case: the liver (and its lesions), the spleen, and what surrounds
them so that they are not the only things in the cavity: lung bases, kidneys, stomach, gas in the bowel.

Each organ is a smooth blob: an ellipse per slice whose size follows a round profile along its span of slices,
deformed by the case's smooth shape field and clipped to the abdominal cavity, so that it moulds to the wall."""

from __future__ import annotations

import numpy as np

from nnal.synth.anatomy import FAT_HU, Frame, Spine, ball, constant, span
from nnal.synth.render import GAS_HU, Blob

LIVER_HU = (55.0, 65.0)
SPLEEN_HU = (45.0, 55.0)
LESION_HU = (20.0, 40.0)  # hypodense against the liver
KIDNEY_HU = (28.0, 38.0)
LUNG_HU = (-880.0, -820.0)
FLUID_HU = (5.0, 20.0)
WALL_HU = (35.0, 45.0)  # the wall of stomach and bowel
NO_LESION_CHANCE = 0.2  # MSD Liver too has cases without tumour
MAX_LESIONS = 8


def liver(rng: np.random.Generator, frame: Frame, *, label: int) -> tuple[Blob, Blob]:
    """The right lobe, large, in the right upper abdomen from about a third of the scan up to near its top, its
    tip lateral and anterior; and the left lobe reaching across the midline in front, in the liver's upper part."""
    t0, t1 = rng.uniform(0.25, 0.45), rng.uniform(0.82, 0.95)
    hu = constant(frame, rng.uniform(*LIVER_HU))
    organ = dict(hu=hu, label=label, texture=4.0, in_cavity=True)
    size = span(frame, t0, t1, peak=rng.uniform(0.55, 0.75))
    toward_tip = np.clip((t1 - frame.t) / (t1 - t0), 0.0, 1.0)
    x, y = frame.at(-rng.uniform(0.38, 0.5), rng.uniform(-0.1, 0.1))
    right = Blob(cx=x - 0.06 * toward_tip, cy=y - 0.05 * toward_tip, a=rng.uniform(0.3, 0.4) * size,
                 b=rng.uniform(0.35, 0.5) * size, wobble=0.18, **organ)
    left_start = t0 + rng.uniform(0.35, 0.6) * (t1 - t0)
    left_size = span(frame, left_start, t1 + 0.02, peak=0.6)
    x, y = frame.at(rng.uniform(-0.1, 0.15), -rng.uniform(0.35, 0.5))
    left = Blob(cx=constant(frame, x), cy=constant(frame, y), a=rng.uniform(0.2, 0.3) * left_size,
                b=rng.uniform(0.12, 0.18) * left_size, angle=rng.uniform(-0.3, 0.1), wobble=0.15, **organ)
    return right, left


def lesions(rng: np.random.Generator, frame: Frame, lobe: Blob, *, voxel: float) -> list[Blob]:
    """Hypodense lesions inside the liver (label 2), none in some cases, up to MAX_LESIONS in others, of radius
    1.5-11% of half the field of view (2-28 mm at 512 voxels; never below 1.5 voxels, ``voxel`` in normalised
    units), round in mm along the body axis. Each centre lies well inside the lobe's ellipse (at most 0.45 of
    its radius, where the wobble cannot reach); painted only where the liver is."""
    count = 0 if rng.uniform() < NO_LESION_CHANCE else min(1 + int(rng.poisson(1.5)), MAX_LESIONS)
    widest = np.flatnonzero(lobe.a >= 0.6 * lobe.a.max())
    found = []
    for _ in range(count):
        k = int(rng.choice(widest))
        theta, reach = rng.uniform(0, 2 * np.pi), 0.45 * np.sqrt(rng.uniform())
        p, q = reach * np.cos(theta) * lobe.a[k], reach * np.sin(theta) * lobe.b[k]
        cos, sin = np.cos(lobe.angle), np.sin(lobe.angle)
        x, y = lobe.cx[k] + cos * p - sin * q, lobe.cy[k] + sin * p + cos * q
        radius = max(float(np.exp(rng.uniform(np.log(0.015), np.log(0.11)))), 1.5 * voxel)
        radii = ball(frame, frame.z_mm[k] + rng.uniform(-0.5, 0.5) * frame.mm_per_slice, radius)
        aspect = rng.uniform(0.75, 1.25)
        found.append(Blob(cx=constant(frame, x), cy=constant(frame, y), a=radii * aspect, b=radii / aspect,
                          hu=constant(frame, rng.uniform(*LESION_HU)), label=2, within=1, texture=3.0,
                          angle=rng.uniform(0, np.pi), wobble=0.1))
    return found


def spleen(rng: np.random.Generator, frame: Frame, *, label: int) -> Blob:
    """On the left, posterior and lateral, in the upper half of the scan: an elongated oval along the ribs with a
    dent at its hilum (medial and anterior), smaller than the liver and on fewer slices."""
    t0 = rng.uniform(0.45, 0.62)
    t1 = min(t0 + rng.uniform(0.2, 0.32), 0.95)
    size = span(frame, t0, t1, power=0.6)
    x, y = frame.at(rng.uniform(0.45, 0.6), rng.uniform(0.05, 0.3))
    angle = rng.uniform(-0.9, -0.4)
    hilum = 1.25 * np.pi - angle  # medial-anterior in the image, in the blob's own frame
    return Blob(cx=constant(frame, x), cy=constant(frame, y), a=rng.uniform(0.1, 0.14) * size,
                b=rng.uniform(0.18, 0.26) * size, hu=constant(frame, rng.uniform(*SPLEEN_HU)), label=label,
                angle=angle, indent=(hilum, rng.uniform(0.25, 0.45), 0.6), wobble=0.12, texture=3.0,
                in_cavity=True)


def kidneys(rng: np.random.Generator, frame: Frame, spine: Spine) -> list[Blob]:
    """Either side of the spine in the lower half, the right one a little lower, hilum facing the spine, each in
    its capsule of perirenal fat (what makes an unenhanced kidney stand out from the soft tissue round it)."""
    found = []
    for side in (-1, 1):  # patient right, left
        t0 = rng.uniform(0.05, 0.2) - (0.05 if side < 0 else 0.0)
        size = span(frame, t0, t0 + rng.uniform(0.3, 0.4))
        a, b = rng.uniform(0.07, 0.09) * size, rng.uniform(0.1, 0.13) * size
        angle = side * rng.uniform(0.3, 0.6)
        hilum = np.arctan2(-0.6, -side) - angle
        place = dict(cx=constant(frame, spine.x + side * rng.uniform(0.3, 0.38)),
                     cy=constant(frame, spine.y + rng.uniform(-0.02, 0.06)), angle=angle, in_cavity=True)
        found += [Blob(a=1.4 * a, b=1.3 * b, hu=constant(frame, rng.uniform(*FAT_HU)), wobble=0.1, texture=4.0,
                       **place),
                  Blob(a=a, b=b, hu=constant(frame, rng.uniform(*KIDNEY_HU)), indent=(hilum, 0.35, 0.5),
                       wobble=0.05, texture=3.0, **place)]
    return found


def lungs(rng: np.random.Generator, frame: Frame, *, liver_top: float) -> list[Blob]:
    """Lung bases in the posterior cavity of the top slices, growing upwards from just below the liver's dome
    (the posterior recesses reach behind it): the slices above the organs look like the lower chest."""
    found = []
    for side in (-1, 1):
        start = liver_top - rng.uniform(0.12, 0.25)
        grow = np.sqrt(np.clip((frame.t - start) / (1.0 - start), 0.0, 1.0))
        x, y = frame.at(side * rng.uniform(0.4, 0.5), rng.uniform(0.2, 0.35))
        found.append(Blob(cx=constant(frame, x), cy=constant(frame, y), a=rng.uniform(0.3, 0.38) * grow,
                          b=rng.uniform(0.4, 0.5) * grow, hu=constant(frame, rng.uniform(*LUNG_HU)), texture=25.0,
                          wobble=0.1, in_cavity=True))
    return found


def stomach(rng: np.random.Generator, frame: Frame) -> list[Blob]:
    """Left upper abdomen, in front: a wall round fluid, with gas in front of an air-fluid level."""
    t0 = rng.uniform(0.45, 0.6)
    size = span(frame, t0, min(t0 + rng.uniform(0.2, 0.3), 0.95))
    x, y = frame.at(rng.uniform(0.15, 0.35), -rng.uniform(0.1, 0.3))
    a, b = rng.uniform(0.15, 0.22) * size, rng.uniform(0.12, 0.18) * size
    centre = dict(cx=constant(frame, x), cy=constant(frame, y), in_cavity=True)
    level = y - 0.85 * b * rng.uniform(0.1, 0.8)
    return [Blob(a=a, b=b, hu=constant(frame, rng.uniform(*WALL_HU)), wobble=0.08, **centre),
            Blob(a=0.85 * a, b=0.85 * b, hu=constant(frame, rng.uniform(*FLUID_HU)), gas_level=level, **centre)]


def bowel_gas(rng: np.random.Generator, frame: Frame) -> list[Blob]:
    """Gas in bowel loops (a wall round each pocket), in front and in the lower half of the scan."""
    found = []
    for _ in range(int(rng.integers(4, 13))):
        z = rng.uniform(0.0, 0.55) * frame.z_mm[-1]
        x, y = frame.at(rng.uniform(-0.5, 0.5), rng.uniform(-0.65, 0.1))
        radii = ball(frame, z, rng.uniform(0.02, 0.05))
        centre = dict(cx=constant(frame, x), cy=constant(frame, y), in_cavity=True)
        found += [Blob(a=1.35 * radii, b=1.35 * radii, hu=constant(frame, rng.uniform(*WALL_HU)), **centre),
                  Blob(a=radii, b=radii, hu=constant(frame, GAS_HU), **centre)]
    return found
