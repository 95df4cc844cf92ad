"""One block of one job: read every scene warped onto the block, best-pixel composite, SL2P, encode.

:func:`process_block` is a pure function of a picklable :class:`JobSpec` and a block geobox, so it runs the same
in a thread pool or on a Dask worker, and its memory is a fixed multiple of the block's pixel count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from types import EllipsisType

import numpy as np
import shapely
from odc.geo.geobox import GeoBox
from rasterio.features import geometry_mask

from ... import composite, products
from ...sensors import ANGLE_INPUTS, SENSORS, WATER_TEST
from ...sl2p import NetworkSet, estimate
from .encode import encode
from .fold import FoldRule, fold
from .masks import quality_clear, reflectance_invalid, water_invalid
from .reading import dn_tables, physical, read_many, read_scaled, read_warped
from .scenes import AssetRef, Scene

_NO_SCORE = np.float32(-np.inf)
WHOLE_BLOCK_SHARE = 0.5
"""SL2P runs on views of the whole block when one sensor has every observation of a block that is at least this
much observed: the kernel on the few unobserved pixels (NaN inputs, NaN outputs, their flags masked by
encode_block) costs less than gathering 11 inputs and scattering 8 outputs."""


@dataclass(frozen=True)
class JobSpec:
    """Everything a block needs, computed once per job."""

    scenes: tuple[Scene, ...]
    scene_bounds: tuple[tuple[float, float, float, float], ...]
    """Each scene's footprint bounds in the job CRS: blocks outside a scene skip it without opening files."""
    nets: Mapping[str, NetworkSet]
    """Network set per member sensor id."""
    variables: tuple[str, ...]
    """Biophysical variables requested (LAI, fCOVER, …)."""
    products: tuple[str, ...]
    """Every product file of the job, in output order."""
    uncertainty: bool
    start: date
    end: date
    region: shapely.Geometry | None
    """Region polygon in the job CRS (None: the whole geobox, e.g. a grid tile)."""
    default_sensor_code: int
    """QC sensor code of pixels without any observation."""
    landcover: AssetRef | None = None
    """NALCMS class raster for SL2P-CCRS (read with nearest neighbour)."""


def band_order(spec: JobSpec) -> tuple[str, ...]:
    """Reflectance inputs shared by every member sensor (the merged LS_SR sensors share their band names)."""
    return tuple(spec.scenes[0].bands) if spec.scenes else ()


def _inside_region(spec: JobSpec, gbox: GeoBox) -> np.ndarray:
    shape = (gbox.height, gbox.width)
    if spec.region is None:
        return np.ones(shape, dtype=bool)
    box = shapely.box(*gbox.extent.boundingbox)
    if not spec.region.intersects(box):
        return np.zeros(shape, dtype=bool)
    # Every pixel centre strictly inside the polygon: no need to rasterize it. The centres' rectangle, not the
    # block's, so that a block whose outer edge runs along (or a rounding past) the region's edge, as the edge
    # blocks of a region on the grid do, is not rasterized for nothing.
    h, w = shape
    centres = shapely.Polygon([gbox.transform * xy for xy in ((0.5, 0.5), (w - 0.5, 0.5), (w - 0.5, h - 0.5),
                                                              (0.5, h - 0.5))]) if h > 1 and w > 1 else None
    if centres is not None and spec.region.contains_properly(centres):
        return np.ones(shape, dtype=bool)
    return geometry_mask([spec.region], out_shape=shape, transform=gbox.transform, invert=True)


def _touches(bounds: tuple[float, float, float, float], gbox: GeoBox) -> bool:
    left, bottom, right, top = gbox.extent.boundingbox
    return bounds[0] < right and bounds[2] > left and bounds[1] < top and bounds[3] > bottom


@dataclass
class Composite:
    """Running best-pixel composite of one block."""

    score: np.ndarray
    bands: np.ndarray
    """[n_bands, h, w] float32 reflectance of the chosen observation."""
    angles: np.ndarray
    """[3, h, w] float32: cos(VZA), cos(SZA), cos(RAA) of the chosen observation."""
    doy: np.ndarray
    sensor_code: np.ndarray

    @classmethod
    def empty(cls, n_bands: int, shape: tuple[int, int]) -> Composite:
        return cls(np.full(shape, _NO_SCORE, np.float32), np.full((n_bands, *shape), np.nan, np.float32),
                   np.zeros((3, *shape), np.float32), np.zeros(shape, np.uint16), np.zeros(shape, np.uint8))

    @property
    def has_obs(self) -> np.ndarray:
        return self.score > _NO_SCORE


def _angles(scene: Scene, gbox: GeoBox) -> tuple[np.ndarray | float, ...]:
    """cos(VZA), cos(SZA), cos(RAA) with RAA = sun azimuth − view azimuth; per pixel where the item has rasters."""
    values: dict[str, np.ndarray | float] = {
        "sza": scene.sun_zenith, "saa": scene.sun_azimuth, "vza": scene.view_zenith, "vaa": scene.view_azimuth}
    for name, ref in scene.angle_assets.items():
        per_pixel, has = read_scaled(ref, gbox)
        values[name] = np.where(has, per_pixel, np.float32(values[name]))  # scene mean where the raster is empty
    rad = np.float32(np.pi / 180)
    return (np.cos(np.float32(values["vza"]) * rad), np.cos(np.float32(values["sza"]) * rad),
            np.cos((np.float32(values["saa"]) - np.float32(values["vaa"])) * rad))


def _read_bands(scene: Scene, gbox: GeoBox, as_dn: bool = False
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The scene's bands [n_bands, h, w], their DN → reflectance tables, and the pixels that every band has and
    the scene's quality layers leave clear (the bands hold any value where there is no data).

    With ``as_dn``, bands of one 8/16-bit unsigned type come as their DN with the tables of
    :func:`reading.physical` (the fold looks them up per chunk); otherwise, and for other types, as float32
    reflectance (rounded once from float64 so k/10 values stay exact) and no tables."""
    shape = (gbox.height, gbox.width)
    refs = list(scene.bands.values())
    layers = [ref for _, ref in scene.quality]
    reads = read_many([*refs, *layers], gbox, [False] * len(refs) + [True] * len(layers))
    clear = np.ones(shape, dtype=bool)
    for _, has in reads[:len(refs)]:
        clear &= has
    clear &= quality_clear(scene, reads[len(refs):])  # the sensor's quality layers (masks.py)
    raws = [raw for raw, _ in reads[:len(refs)]]
    tables = dn_tables(refs, raws[0].dtype) if as_dn and len({r.dtype for r in raws}) == 1 else None
    if tables is not None:
        return np.stack(raws), tables, clear
    bands = np.empty((len(refs), *shape), np.float32)
    for i, (ref, raw) in enumerate(zip(refs, raws, strict=True)):
        physical(ref, raw, out=bands[i])
    return bands, None, clear


def read_observation(scene: Scene, gbox: GeoBox) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance [n_bands, h, w] (NaN where data or quality layers leave no value) and its clear pixels by every
    rule: data, quality layers, water test, reflectance range (the blocks apply the last two per pixel, in
    :func:`fold.fold`)."""
    bands, _, clear = _read_bands(scene, gbox)
    bands[:, ~clear] = np.nan
    clear &= ~water_invalid(scene, bands)
    clear &= ~reflectance_invalid(bands)
    return bands, clear


def fold_rule(scene: Scene, spec: JobSpec) -> FoldRule:
    """Band positions of the score and of the water test in the scene's stack, and its score term."""
    common = [scene.sensor.band(n).common_name for n in scene.bands]
    green, nir = (common.index(WATER_TEST.green), common.index(WATER_TEST.nir)) if scene.water_test else (-1, -1)
    return FoldRule(common.index("red"), common.index("nir08"), green, nir,
                    composite.scene_term(scene.date, spec.start, spec.end, scene.cloud_cover))


def add_scene(comp: Composite, scene: Scene, gbox: GeoBox, spec: JobSpec, inside: np.ndarray) -> None:
    """Fold one scene into the composite: a clear pixel replaces the current one if its score is higher
    (scenes come in time order and ties keep the earlier one)."""
    bands, tables, clear = _read_bands(scene, gbox, as_dn=True)
    clear &= inside
    if not clear.any():
        return
    fold(comp, bands, clear, fold_rule(scene, spec), _angles(scene, gbox), scene.day_of_year, scene.sensor.qc_code,
         luts=tables)


def _estimate_sensor(spec: JobSpec, comp: Composite, sel: np.ndarray | EllipsisType, sensor_id: str,
                     partition: np.ndarray | None):
    """SL2P on the composite's pixels ``sel`` (a mask, or ``...`` for the whole block: views, no gathering)."""
    nets = spec.nets[sensor_id]
    names = band_order(spec)
    inputs: dict[str, np.ndarray] = dict(zip(ANGLE_INPUTS, comp.angles[:, sel], strict=True))
    for i, name in enumerate(names):
        inputs[name] = comp.bands[i][sel]
    part = None
    if nets.is_ccrs:
        part = partition[sel] if partition is not None else None
    return estimate(nets, inputs, spec.variables, partition=part, uncertainty=spec.uncertainty,
                    precision="float32")


def _as_flag(value, variables: tuple[str, ...], shape: tuple[int, ...]) -> np.ndarray:
    """A per-pixel flag from an array or a per-variable mapping of arrays (OR over the requested variables)."""
    if value is None:
        return np.zeros(shape, dtype=bool)
    if isinstance(value, Mapping):
        out = np.zeros(shape, dtype=bool)
        for v in variables:
            if v in value:
                out |= np.asarray(value[v], dtype=bool)
        return out
    return np.asarray(value, dtype=bool)


def _put(into: dict[str, np.ndarray], name: str, key: np.ndarray | EllipsisType, estimate: np.ndarray,
         shape: tuple[int, int]) -> None:
    """Place one sensor's estimates: the whole block's array as it is (``...``: the only sensor of the block), or
    scattered into a NaN array at the pixels ``key``."""
    if key is ...:
        into[name] = estimate
        return
    if name not in into:
        into[name] = np.full(shape, np.nan, np.float32)
    into[name][key] = estimate


def process_block(spec: JobSpec, gbox: GeoBox) -> dict[str, np.ndarray]:
    """Encoded arrays (product → DN array of the block's shape) for one block."""
    shape = (gbox.height, gbox.width)
    inside = _inside_region(spec, gbox)
    comp = Composite.empty(len(band_order(spec)), shape)
    if inside.any():
        for scene, bounds in zip(spec.scenes, spec.scene_bounds, strict=True):
            if _touches(bounds, gbox):
                add_scene(comp, scene, gbox, spec, inside)
    has_obs = comp.has_obs
    partition = None
    if spec.landcover is not None:
        raw, has_lc = read_warped(spec.landcover, gbox, categorical=True)
        partition = np.where(has_lc, raw, 0).astype(np.int32)

    values: dict[str, np.ndarray] = {}
    unc: dict[str, np.ndarray] = {}
    domain = np.zeros(shape, dtype=bool)
    out_of_range = np.zeros(shape, dtype=bool)
    n_obs = int(has_obs.sum())
    for sensor_id in spec.nets:
        sel = has_obs & (comp.sensor_code == SENSORS[sensor_id].qc_code)
        n = int(sel.sum())
        if n == 0:
            continue
        key = ... if n == n_obs and n >= WHOLE_BLOCK_SHARE * sel.size else sel  # ``...``: views of the block
        est = _estimate_sensor(spec, comp, key, sensor_id, partition)
        for v in spec.variables:
            _put(values, v, key, est.values[v], shape)
            if v in est.uncertainty:  # a user's network set may lack uncertainty networks
                _put(unc, v, key, est.uncertainty[v], shape)
        picked = est.values[spec.variables[0]].shape
        domain[key] = _as_flag(est.input_out_of_domain, spec.variables, picked)
        out_of_range[key] = _as_flag(est.out_of_range, spec.variables, picked)
    for v in spec.variables:  # NaN (nodata) where no sensor gave an estimate
        if v not in values:
            values[v] = np.full(shape, np.nan, np.float32)
        if spec.uncertainty and v not in unc:
            unc[v] = np.full(shape, np.nan, np.float32)
    return encode_block(spec, comp, values, unc, domain, out_of_range, inside, partition)


def encode_block(spec: JobSpec, comp: Composite, values: dict[str, np.ndarray], unc: dict[str, np.ndarray],
                 domain: np.ndarray, out_of_range: np.ndarray, inside: np.ndarray,
                 partition: np.ndarray | None) -> dict[str, np.ndarray]:
    """Product DN arrays; outside the region every product is its nodata value."""
    has_obs = comp.has_obs
    code = np.where(has_obs, comp.sensor_code, np.uint8(spec.default_sensor_code))
    encoded = has_obs & inside  # estimates are nodata outside the region too
    out: dict[str, np.ndarray] = {}
    for name in spec.products:
        p = products.product(name)
        if name in values:
            dn = encode(name, values[name], encoded)
        elif name.removesuffix(products.UNCERTAINTY_SUFFIX) in unc:
            dn = encode(name, unc[name.removesuffix(products.UNCERTAINTY_SUFFIX)], encoded)
        elif name == "QC":
            dn = products.qc_byte(domain & has_obs, out_of_range & has_obs, ~has_obs, code)
        elif name == "Date":
            dn = np.where(has_obs, comp.doy, 0).astype(p.dtype)
        elif name == "Partition":
            dn = (partition if partition is not None else np.zeros(has_obs.shape)).astype(p.dtype)
        else:
            raise ValueError(f"the local engine cannot make product {name!r}")
        dn[~inside] = p.nodata
        out[name] = dn
    return out
