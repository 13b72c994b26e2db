"""One synthetic CT case: its geometry (slices, spacing, a scanner's affine), its anatomy in painting order, and
its image and label files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from nnal.synth import anatomy, organs
from nnal.synth.render import Blob, render_case

IN_PLANE_MM = (0.6, 1.0)
SLICE_MM = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)  # the reconstruction thicknesses scanners offer
NOISE_HU = (10.0, 20.0)
DESCRIPTION = "nnal synth: synthetic CT, not patient data"  # in every file's header (80 characters at most)


@dataclass(frozen=True)
class SynthCase:
    shape: tuple[int, int, int]  # (slices, rows, columns): the painting order; the files hold its transpose
    spacing: tuple[float, float, float]  # mm, in the files' axis order (column, row, slice)
    affine: np.ndarray
    blobs: list[Blob]
    noise_sigma: float


def draw_case(rng: np.random.Generator, kind: str, *, size: int, slices: tuple[int, int]) -> SynthCase:
    """A case's geometry and anatomy: everything random about it except the noise, drawn in a fixed order."""
    nz = int(rng.integers(slices[0], slices[1] + 1))
    pixel = round(float(rng.uniform(*IN_PLANE_MM)), 4)
    thickness = float(rng.choice(SLICE_MM))
    frame = anatomy.draw_frame(rng, nz, mm_per_unit=pixel * size / 2, mm_per_slice=thickness)
    blobs = abdomen(rng, frame, kind, voxel=2.0 / size)
    spacing = (pixel, pixel, thickness)
    return SynthCase((nz, size, size), spacing, scanner_affine(rng, spacing, size), blobs,
                     float(rng.uniform(*NOISE_HU)))


def abdomen(rng: np.random.Generator, frame: anatomy.Frame, kind: str, *, voxel: float) -> list[Blob]:
    """Every structure in painting order: the body, then what lies around the organs, the organs (the one of
    ``kind`` labelled, the other not), the lesions of a liver case, and last the vessels and bones, which clear
    any organ label under them."""
    spine = anatomy.draw_spine(rng, frame)
    right_lobe, left_lobe = organs.liver(rng, frame, label=1 if kind == "liver" else 0)
    liver_top = float(frame.t[np.flatnonzero(right_lobe.a > 0).max()])
    blobs = [*anatomy.body(rng, frame), *anatomy.paraspinal_muscles(rng, frame, spine),
             *organs.lungs(rng, frame, liver_top=liver_top), *organs.kidneys(rng, frame, spine),
             *organs.stomach(rng, frame), *organs.bowel_gas(rng, frame),
             organs.spleen(rng, frame, label=1 if kind == "spleen" else 0), right_lobe, left_lobe]
    if kind == "liver":
        blobs += organs.lesions(rng, frame, right_lobe, voxel=voxel)
    return [*blobs, *anatomy.vessels(rng, frame, spine), *anatomy.vertebrae(rng, frame, spine),
            *anatomy.ribs(rng, frame)]


def scanner_affine(rng: np.random.Generator, spacing: tuple[float, float, float], size: int) -> np.ndarray:
    """Axial slices as a DICOM series lands in NIfTI without reorienting (RAS+ world, voxel axes L, P, S):
    columns run to the patient's left, rows to the back, slices upwards; the scan centre near the scanner's
    isocentre, the table somewhere along its travel."""
    dx, dy, dz = spacing
    origin = (dx * (size - 1) / 2 + rng.uniform(-15.0, 15.0), dy * (size - 1) / 2 + rng.uniform(-25.0, 25.0),
              rng.uniform(-700.0, -100.0))
    affine = np.diag([-dx, -dy, dz, 1.0])
    affine[:3, 3] = origin
    return affine


def write_case(case: SynthCase, rng: np.random.Generator, image_path: Path, label_path: Path) -> None:
    """Render the case (the noise drawn from ``rng`` now) and write its int16 image and uint8 label."""
    image, labels = render_case(case.blobs, case.shape, case.noise_sigma, rng)
    _save(image.T, case, np.int16, image_path)  # (slices, rows, columns) -> NIfTI's (column, row, slice)
    _save(labels.T, case, np.uint8, label_path)


def _save(array: np.ndarray, case: SynthCase, dtype: type, path: Path) -> None:
    img = nib.Nifti1Image(array, case.affine)
    img.header.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = DESCRIPTION.encode()
    img.set_qform(case.affine, code=1)  # scanner coordinates, as a converted DICOM series has them
    img.set_sform(case.affine, code=1)
    nib.save(img, str(path))
