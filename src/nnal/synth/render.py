"""Rasterising a synthetic case: each structure a stack of 2D ellipses painted slice by slice in a fixed order
(later ones cover earlier ones, as tissue does), smooth random fields for texture and shape, then a partial-volume
blur, scanner noise and int16 quantisation as a CT scanner stores its images.

Coordinates are normalised to the slice: x from -1 (patient right) to 1 (patient left), y from -1 (anterior) to
1 (posterior); slice k runs inferior (0) to superior (nz - 1). Painting a slice at a time keeps the working set
in cache and the memory small whatever the volume's size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

AIR_HU = -1000.0
GAS_HU = -990.0  # bowel and stomach gas: air, a touch above the outside air
OUTSIDE_FOV_HU = -1024  # what scanners write outside the reconstruction circle
HU_RANGE = (-1024, 3071)  # the 12-bit range CT images are stored in
SHAPE_FIELD_LIMIT = 2.5  # bounds a structure's wobble, so that it stays inside its bounding box


@dataclass(frozen=True)
class Blob:
    """One structure as a stack of 2D (super)ellipses, one per slice; absent on slices where ``a`` is 0.

    ``cx, cy, a, b, hu`` are per-slice arrays: centre, semi-axes along the blob's own axes (turned by ``angle``,
    radians) and Hounsfield units. ``label`` is written where the blob is painted (0 clears an organ's label
    under a vessel or a bone). Options: ``wobble`` deforms the outline by the smooth shape field (a fraction of
    the radius); ``texture`` adds the fine field times this many HU; ``indent`` = (direction in the blob's frame,
    depth, width) dents the outline at a hilum; ``in_cavity`` clips to the abdominal cavity (the blob with
    ``is_cavity``); ``within`` paints only where the label already is that value (a lesion inside its organ);
    ``fat`` = (threshold, HU) turns the voxels where the fat field exceeds the threshold into fat; ``gas_level``
    (per slice, y) fills what lies anterior of it with gas (an air-fluid level, the patient lying supine)."""

    cx: np.ndarray
    cy: np.ndarray
    a: np.ndarray
    b: np.ndarray
    hu: np.ndarray
    label: int = 0
    angle: float = 0.0
    exponent: float = 2.0
    wobble: float = 0.0
    texture: float = 0.0
    indent: tuple[float, float, float] | None = None
    in_cavity: bool = False
    within: int | None = None
    fat: tuple[float, float] | None = None
    gas_level: np.ndarray | None = None
    is_cavity: bool = False

    def reach(self, k: int) -> float:
        """A radius around the centre that holds the whole outline on slice ``k``."""
        return float(np.hypot(self.a[k], self.b[k])) * (1.0 + SHAPE_FIELD_LIMIT * self.wobble)


class SliceGrid:
    """Normalised coordinates of one slice's columns (x) and rows (y), and the bounding box of a disc."""

    def __init__(self, ny: int, nx: int):
        self.ny, self.nx = ny, nx
        self.x = ((np.arange(nx, dtype=np.float32) - (nx - 1) / 2) / (nx / 2))[None, :]
        self.y = ((np.arange(ny, dtype=np.float32) - (ny - 1) / 2) / (ny / 2))[:, None]

    def box(self, cx: float, cy: float, reach: float) -> tuple[slice, slice] | None:
        """(rows, columns) of the pixels within ``reach`` of (cx, cy), None when none lies in the slice."""
        cols = _index_range(cx, reach, self.nx)
        rows = _index_range(cy, reach, self.ny)
        return None if cols is None or rows is None else (rows, cols)


def _index_range(centre: float, reach: float, n: int) -> slice | None:
    """The indices within ``reach`` of ``centre`` along an axis of ``n`` pixels (SliceGrid's mapping inverted)."""
    lo = max(0, int(np.floor((centre - reach) * (n / 2) + (n - 1) / 2)))
    hi = min(n, int(np.ceil((centre + reach) * (n / 2) + (n - 1) / 2)) + 1)
    return slice(lo, hi) if lo < hi else None


class SmoothField:
    """A smooth random 3D field of unit variance: random weights on a grid of Gaussian bumps, separable, so a slice
    costs two small matrix products (no 3D filtering of a whole volume)."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int, int], bumps: int, slices_per_bump: float):
        nz, ny, nx = shape
        nz_bumps = int(np.ceil(nz / slices_per_bump)) + 2
        weights = rng.standard_normal((nz_bumps, bumps, bumps)).astype(np.float32)
        along_z = _bump_basis(np.arange(nz) / max(nz - 1, 1), nz_bumps)
        self.per_slice = np.tensordot(along_z, weights, axes=1)  # (nz, bumps, bumps)
        self.rows = _bump_basis(np.linspace(0.0, 1.0, ny), bumps)
        self.cols = _bump_basis(np.linspace(0.0, 1.0, nx), bumps)

    def at(self, k: int) -> np.ndarray:
        return self.rows @ self.per_slice[k] @ self.cols.T


def _bump_basis(positions: np.ndarray, bumps: int) -> np.ndarray:
    """(len(positions), bumps): Gaussian bumps spread a little beyond [0, 1], each row of unit norm, so the
    field's variance is 1 everywhere."""
    centres = np.linspace(-0.1, 1.1, bumps)
    width = centres[1] - centres[0]
    basis = np.exp(-0.5 * ((positions[:, None] - centres[None, :]) / width) ** 2)
    return (basis / np.linalg.norm(basis, axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class Fields:
    """One slice of the case's three fields: fine (tissue texture), fat (visceral fat pockets), shape (outlines)."""

    fine: np.ndarray
    fat: np.ndarray
    shape: np.ndarray


class CaseFields:
    """A case's three smooth fields, by the spacing of their bumps: texture 4% of the field of view's width and 3
    slices, fat pockets 3% and 3 slices, outlines 17% and a fifth of the scan (an organ wobbles a few times
    round its outline and slowly along its span)."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int, int]):
        self.fine = SmoothField(rng, shape, bumps=28, slices_per_bump=3.0)
        self.fat = SmoothField(rng, shape, bumps=36, slices_per_bump=3.0)
        self.shape = SmoothField(rng, shape, bumps=8, slices_per_bump=max(shape[0] / 5, 2.0))

    def at(self, k: int) -> Fields:
        outline = np.clip(self.shape.at(k), -SHAPE_FIELD_LIMIT, SHAPE_FIELD_LIMIT)
        return Fields(self.fine.at(k), self.fat.at(k), outline)


def render_case(blobs: list[Blob], shape: tuple[int, int, int], noise_sigma: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The case's image (int16 HU) and labels (uint8), both (nz, ny, nx), painted slice by slice."""
    nz, ny, nx = shape
    grid = SliceGrid(ny, nx)
    fields = CaseFields(rng, shape)
    outlines = OutlineCache(grid)
    outside_fov = np.broadcast_to(grid.x**2 + grid.y**2 > 1.0, (ny, nx))
    image = np.empty(shape, dtype=np.int16)
    labels = np.empty(shape, dtype=np.uint8)
    noise = np.empty((ny, nx), dtype=np.float32)
    # one BLAS thread: the fields' small matrix products are slower threaded, on a busy machine many times so
    with threadpool_limits(limits=1, user_api="blas"):
        for k in range(nz):
            hu, labels[k] = paint_slice(blobs, k, grid, fields.at(k), outlines)
            hu = partial_volume(hu)
            rng.standard_normal(out=noise, dtype=np.float32)
            hu += np.float32(noise_sigma) * noise
            np.copyto(hu, np.float32(OUTSIDE_FOV_HU), where=outside_fov)
            image[k] = np.clip(np.rint(hu), *HU_RANGE)
    return image, labels


def partial_volume(hu: np.ndarray, weight: float = 0.2) -> np.ndarray:
    """A 3-tap blur along rows and columns ([w, 1 - 2w, w], close to a Gaussian of 0.6 voxels, edges repeated):
    boundaries a voxel wide, as a reconstruction kernel leaves them, at a fifth of a Gaussian filter's cost."""
    w = np.float32(weight)
    for axis in (0, 1):
        out = (1 - 2 * w) * hu
        before, after = [slice(None)] * 2, [slice(None)] * 2
        before[axis], after[axis] = slice(None, -1), slice(1, None)
        out[tuple(after)] += w * hu[tuple(before)]
        out[tuple(before)] += w * hu[tuple(after)]
        edge_lo, edge_hi = [slice(None)] * 2, [slice(None)] * 2
        edge_lo[axis], edge_hi[axis] = 0, -1
        out[tuple(edge_lo)] += w * hu[tuple(edge_lo)]
        out[tuple(edge_hi)] += w * hu[tuple(edge_hi)]
        hu = out
    return hu


def paint_slice(blobs: list[Blob], k: int, grid: SliceGrid, fields: Fields,
                outlines: OutlineCache | None = None) -> tuple[np.ndarray, np.ndarray]:
    """HU (float32) and labels (uint8) of slice ``k``: air, then every blob present on it, in order."""
    outlines = outlines or OutlineCache(grid)
    hu = np.full((grid.ny, grid.nx), AIR_HU, dtype=np.float32)
    labels = np.zeros((grid.ny, grid.nx), dtype=np.uint8)
    cavity = np.zeros((grid.ny, grid.nx), dtype=bool)
    for blob in blobs:
        if blob.a[k] <= 0 or blob.b[k] <= 0:
            continue
        box = grid.box(float(blob.cx[k]), float(blob.cy[k]), blob.reach(k))
        if box is None:
            continue
        inside = _inside(blob, k, grid, box, fields, outlines)
        if blob.is_cavity:
            cavity[box] = inside
        if blob.in_cavity:
            inside &= cavity[box]
        if blob.within is not None:
            inside &= labels[box] == blob.within
        np.copyto(hu[box], _values(blob, k, grid, box, fields), where=inside)
        np.copyto(labels[box], np.uint8(blob.label), where=inside)
    return hu, labels


class OutlineCache:
    """The outlines of blobs that only grow or shrink from slice to slice (a fixed centre and aspect, no dent):
    computed once per case over their largest box, then scaled, instead of once per slice."""

    def __init__(self, grid: SliceGrid):
        self.grid = grid
        self.entries: dict[int, tuple | None] = {}

    def level(self, blob: Blob, k: int, box: tuple[slice, slice]) -> np.ndarray | None:
        """``_level`` of the blob on slice ``k`` over ``box``, or None when the blob is not of that kind."""
        if id(blob) not in self.entries:
            self.entries[id(blob)] = self._build(blob)
        entry = self.entries[id(blob)]
        if entry is None:
            return None
        ref, (rows, cols), level = entry
        scale = np.float32((blob.a[k] / blob.a[ref]) ** blob.exponent)
        inner = (slice(box[0].start - rows.start, box[0].stop - rows.start),
                 slice(box[1].start - cols.start, box[1].stop - cols.start))
        return level[inner] / scale

    def _build(self, blob: Blob) -> tuple | None:
        present = blob.a > 0
        if blob.indent is not None or present.sum() < 2:
            return None
        if np.ptp(blob.cx[present]) or np.ptp(blob.cy[present]) or np.ptp(blob.b[present] / blob.a[present]) > 1e-9:
            return None
        ref = int(np.argmax(blob.a))
        box = self.grid.box(float(blob.cx[ref]), float(blob.cy[ref]), blob.reach(ref))
        if box is None:
            return None
        return ref, box, _level(*_blob_coordinates(blob, ref, self.grid, box), blob.exponent)


def _blob_coordinates(blob: Blob, k: int, grid: SliceGrid, box: tuple[slice, slice]) -> tuple[np.ndarray, ...]:
    """(p, q): the pixels of ``box`` in the blob's own frame on slice ``k``, in units of its semi-axes."""
    rows, cols = box
    dx, dy = grid.x[:, cols] - np.float32(blob.cx[k]), grid.y[rows, :] - np.float32(blob.cy[k])
    if blob.angle:
        cos, sin = np.float32(np.cos(blob.angle)), np.float32(np.sin(blob.angle))
        dx, dy = cos * dx + sin * dy, cos * dy - sin * dx
    shape = (rows.stop - rows.start, cols.stop - cols.start)
    return (np.broadcast_to(dx / np.float32(blob.a[k]), shape), np.broadcast_to(dy / np.float32(blob.b[k]), shape))


def _level(p: np.ndarray, q: np.ndarray, exponent: float) -> np.ndarray:
    """|p|^e + |q|^e: at most 1 inside the outline (its e-th root is the normalised radius)."""
    if exponent == 2.0:
        return p * p + q * q
    e = np.float32(exponent)
    return np.abs(p) ** e + np.abs(q) ** e


def _inside(blob: Blob, k: int, grid: SliceGrid, box: tuple[slice, slice], fields: Fields,
            outlines: OutlineCache) -> np.ndarray:
    """The pixels of ``box`` inside the blob's outline on slice ``k`` (its dent and wobble included)."""
    level = outlines.level(blob, k, box)
    p = q = None
    if level is None:  # always so for a dented blob, whose dent needs p and q
        p, q = _blob_coordinates(blob, k, grid, box)
        level = _level(p, q, blob.exponent)
    if blob.indent is None and not blob.wobble:
        return level <= 1.0
    rho = np.sqrt(level) if blob.exponent == 2.0 else level ** np.float32(1 / blob.exponent)
    if blob.indent is not None and p is not None:  # a dent where the outline meets the hilum direction
        direction, depth, width = blob.indent
        near = (p - np.float32(np.cos(direction))) ** 2 + (q - np.float32(np.sin(direction))) ** 2
        rho = rho + np.float32(depth) * np.exp(-near / np.float32(width * width))
    if blob.wobble:
        rho = rho - np.float32(blob.wobble) * fields.shape[box]
    return rho <= 1.0


def _values(blob: Blob, k: int, grid: SliceGrid, box: tuple[slice, slice], fields: Fields) -> np.ndarray | float:
    """The HU the blob paints over ``box`` on slice ``k``: its tissue (a number when uniform), texture, fat
    pockets, gas."""
    if not blob.texture and blob.fat is None and blob.gas_level is None:
        return np.float32(blob.hu[k])
    tissue = np.float32(blob.hu[k])
    values = tissue + np.float32(blob.texture) * fields.fine[box]
    if blob.fat is not None:  # fat keeps a third of the texture: fat is more uniform than soft tissue
        threshold, fat_hu = blob.fat
        values = np.where(fields.fat[box] > threshold, np.float32(fat_hu) + np.float32(0.3) * (values - tissue), values)
    if blob.gas_level is not None:
        values = np.where(grid.y[box[0], :] < blob.gas_level[k], np.float32(GAS_HU), values)
    return values
