"""A synthetic abdomen: the body, its bones and vessels, drawn per case from a seeded generator as a list of
:class:`~nnal.synth.render.Blob`, in painting order. The organs are in :mod:`nnal.synth.organs`.

Sizes are in the slice's normalised units (1 = half the field of view) and positions follow the body; along the
body axis the organs span fractions of the scan (so every case has slices without them), while what repeats
at a set distance in the body (vertebrae, ribs) or is round in space (lesions, gas) is measured in mm."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import erfinv

from nnal.synth.render import Blob

FAT_HU = (-115.0, -85.0)
MUSCLE_HU = (35.0, 50.0)
VISCERA_HU = (30.0, 45.0)  # the soft tissue between the organs: bowel, mesentery, vessels
BLOOD_HU = (38.0, 50.0)  # unenhanced
CORTICAL_BONE_HU = (800.0, 1000.0)
CANCELLOUS_BONE_HU = (400.0, 500.0)
DISC_HU = (70.0, 95.0)
CSF_HU = (5.0, 15.0)


@dataclass(frozen=True)
class Frame:
    """Where a case's body lies: slice positions and the body's outline, for placing everything else."""

    t: np.ndarray  # (nz,) 0 at the lowest slice, 1 at the highest
    z_mm: np.ndarray  # (nz,) slice positions along the body axis
    mm_per_unit: float  # mm in one normalised in-plane unit (half the field of view)
    mm_per_slice: float
    centre: tuple[float, float]
    axes: tuple[float, float]  # the body's semi-axes, left-right and anterior-posterior
    girth: np.ndarray  # (nz,) the body's outline scale per slice (the abdomen is not a cylinder)
    fat: float  # subcutaneous fat, a fraction of the body's radius
    wall: float  # the abdominal wall's muscle, the same

    @property
    def nz(self) -> int:
        return len(self.t)

    def at(self, u: float, v: float) -> tuple[float, float]:
        """The point at fractions (u, v) of the body's semi-axes from its centre."""
        return self.centre[0] + u * self.axes[0], self.centre[1] + v * self.axes[1]


def draw_frame(rng: np.random.Generator, nz: int, *, mm_per_unit: float, mm_per_slice: float) -> Frame:
    t = np.arange(nz) / max(nz - 1, 1)
    girth = 1.0 + 0.04 * np.sin(2 * np.pi * (0.8 * t + rng.uniform()))
    return Frame(t=t, z_mm=np.arange(nz) * mm_per_slice, mm_per_unit=mm_per_unit, mm_per_slice=mm_per_slice,
                 centre=(rng.uniform(-0.04, 0.04), rng.uniform(-0.02, 0.08)),
                 axes=(rng.uniform(0.74, 0.9), rng.uniform(0.55, 0.68)), girth=girth,
                 fat=rng.uniform(0.06, 0.16), wall=rng.uniform(0.04, 0.07))


def constant(frame: Frame, value: float) -> np.ndarray:
    return np.full(frame.nz, value, dtype=np.float64)


def fixed(frame: Frame, x: float, y: float, a: float, b: float, hu: float | np.ndarray, **options) -> Blob:
    """A blob the same on every slice (a vessel, a bone of the spine); ``hu`` may vary per slice."""
    hu = hu if isinstance(hu, np.ndarray) else constant(frame, hu)
    return Blob(cx=constant(frame, x), cy=constant(frame, y), a=constant(frame, a), b=constant(frame, b), hu=hu,
                **options)


def span(frame: Frame, t0: float, t1: float, *, peak: float = 0.5, power: float = 0.5) -> np.ndarray:
    """(nz,) a structure's size profile between t0 and t1: 0 outside, rising from either end to 1 at the fraction
    ``peak`` of the way (round, as an organ's cross-sections are)."""
    tau = (frame.t - t0) / (t1 - t0)
    gamma = np.log(0.5) / np.log(peak)  # tau ** gamma is 0.5 at the peak
    inside = (tau > 0) & (tau < 1)
    return np.where(inside, np.sin(np.pi * np.clip(tau, 0, 1) ** gamma) ** power, 0.0)


def ball(frame: Frame, z_centre_mm: float, radius: float) -> np.ndarray:
    """(nz,) cross-section radii of a sphere of ``radius`` (normalised units) centred at ``z_centre_mm``."""
    radius_mm = radius * frame.mm_per_unit
    # at least the slice through the centre, however thick the slices
    reach = max(radius_mm, 0.5 * frame.mm_per_slice + 1e-6)
    off = (frame.z_mm - z_centre_mm) / reach
    return radius * np.sqrt(np.clip(1.0 - off**2, 0.0, None)) * (np.abs(off) < 1)


def body(rng: np.random.Generator, frame: Frame) -> list[Blob]:
    """Skin and subcutaneous fat, the muscle of the abdominal wall, and the cavity inside it: soft tissue with
    pockets of visceral fat (its fat fraction varies per case)."""
    (cx, cy), (a, b) = frame.centre, frame.axes
    exponent = rng.uniform(2.1, 2.6)  # a boxy ellipse: the back flattened on the table, the flanks full
    outline = dict(cx=constant(frame, cx), cy=constant(frame, cy), exponent=exponent)
    inner = 1.0 - frame.fat
    cavity = inner - frame.wall
    fat_fraction = rng.uniform(0.1, 0.35)
    threshold = float(np.sqrt(2) * erfinv(1 - 2 * fat_fraction))  # of a unit normal field: that fraction above
    fat_hu = rng.uniform(*FAT_HU)
    return [
        Blob(**outline, a=a * frame.girth, b=b * frame.girth, hu=constant(frame, fat_hu), texture=4.0),
        Blob(**outline, a=a * inner * frame.girth, b=b * inner * frame.girth,
             hu=constant(frame, rng.uniform(*MUSCLE_HU)), texture=6.0),
        Blob(**outline, a=a * cavity * frame.girth, b=b * cavity * frame.girth,
             hu=constant(frame, rng.uniform(*VISCERA_HU)), texture=12.0, fat=(threshold, fat_hu), is_cavity=True),
    ]


@dataclass(frozen=True)
class Spine:
    x: float
    y: float  # the vertebral body's centre
    radius: float


def draw_spine(rng: np.random.Generator, frame: Frame) -> Spine:
    x, y = frame.at(rng.uniform(-0.03, 0.03), rng.uniform(0.12, 0.22))
    return Spine(x, y, rng.uniform(0.085, 0.1))


def paraspinal_muscles(rng: np.random.Generator, frame: Frame, spine: Spine) -> list[Blob]:
    hu, size = rng.uniform(*MUSCLE_HU), rng.uniform(0.08, 0.11)
    return [fixed(frame, spine.x + side * 1.4 * spine.radius, spine.y + 2.2 * spine.radius, size, 0.8 * size, hu,
                  texture=5.0) for side in (-1, 1)]


def vessels(rng: np.random.Generator, frame: Frame, spine: Spine) -> list[Blob]:
    """The aorta, round, left-anterior of the spine, and the flatter inferior vena cava on the right (it runs
    through the liver: painted after it, it leaves the liver's label a hole, as in real annotations)."""
    hu = rng.uniform(*BLOOD_HU)
    aorta = rng.uniform(0.045, 0.06)
    ivc = rng.uniform(0.04, 0.055)
    front = spine.y - spine.radius
    return [fixed(frame, spine.x + rng.uniform(0.03, 0.07), front - 1.3 * aorta, aorta, aorta, hu),
            fixed(frame, spine.x - rng.uniform(0.09, 0.13), front - 1.5 * ivc, 1.3 * ivc, 0.8 * ivc, hu)]


def vertebrae(rng: np.random.Generator, frame: Frame, spine: Spine) -> list[Blob]:
    """Vertebral bodies (a cortical shell, cancellous inside) with discs between them every 30-38 mm, the neural
    arch round the spinal canal, and the spinous process behind it."""
    period, disc = rng.uniform(30.0, 38.0), rng.uniform(7.0, 11.0)
    in_disc = (frame.z_mm + rng.uniform(0.0, period)) % period < disc
    cortex, cancellous = rng.uniform(*CORTICAL_BONE_HU), rng.uniform(*CANCELLOUS_BONE_HU)
    disc_hu = rng.uniform(*DISC_HU)
    x, y, r = spine.x, spine.y, spine.radius
    canal_y = y + r + 0.055
    return [fixed(frame, x, y, r, 0.85 * r, np.where(in_disc, disc_hu, cortex)),
            fixed(frame, x, y, 0.8 * r, 0.68 * r, np.where(in_disc, disc_hu, cancellous)),
            fixed(frame, x, canal_y, 0.085, 0.075, 0.8 * cortex),  # the neural arch (the canal is cut out of it)
            fixed(frame, x, canal_y + 0.1, 0.025, 0.075, 0.8 * cortex),  # the spinous process
            fixed(frame, x, canal_y, 0.045, 0.04, rng.uniform(*CSF_HU))]


def ribs(rng: np.random.Generator, frame: Frame, *, per_side: int = 5) -> list[Blob]:
    """Rib cross-sections in the wall of the upper abdomen: small ovals at angles round the body (none over the
    spine or the front), each present in bands along the body axis (a rib about every 30 mm, 9-14 mm high) and
    drifting round the wall as the ribs slope."""
    first = rng.uniform(0.35, 0.5)  # the lowest ribs end above the pelvis
    arcs = [(-np.pi / 2 + 0.7, np.pi / 2 - 0.6), (np.pi / 2 + 0.6, 3 * np.pi / 2 - 0.7)]  # patient left, right
    ring = 1.0 - frame.fat - 0.5 * frame.wall
    blobs = []
    for start, stop in arcs:
        for angle in np.linspace(start, stop, per_side) + rng.uniform(-0.08, 0.08, per_side):
            period, height = rng.uniform(26.0, 34.0), rng.uniform(9.0, 14.0)
            present = ((frame.z_mm + rng.uniform(0, period)) % period < height) & (frame.t >= first)
            phi = angle + rng.uniform(-0.3, 0.3) * (frame.t - first)
            cx = frame.centre[0] + ring * frame.axes[0] * frame.girth * np.cos(phi)
            cy = frame.centre[1] + ring * frame.axes[1] * frame.girth * np.sin(phi)
            long, short = rng.uniform(0.035, 0.05), rng.uniform(0.018, 0.025)
            for scale, hu in ((1.0, rng.uniform(*CORTICAL_BONE_HU)), (0.5, rng.uniform(*CANCELLOUS_BONE_HU))):
                blobs.append(Blob(cx=cx, cy=cy, a=np.where(present, long * scale, 0.0),
                                  b=np.where(present, short * scale, 0.0), hu=constant(frame, hu),
                                  angle=float(angle + np.pi / 2)))
    return blobs
