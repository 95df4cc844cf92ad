"""Per-sensor facts: the one place that knows collections, band names, scaling, QA bits and sensor codes.

Everything else (request validation, the local and Earth Engine backends, QC assembly) reads from here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date

ANGLE_INPUTS: tuple[str, ...] = ("cosVZA", "cosSZA", "cosRAA")
"""Angle inputs of every LEAF network set, in network order (angles come first in LEAF sets)."""

SCORE_BANDS: tuple[str, ...] = ("red", "nir08")
"""Common names of the bands the compositing score's NDVI uses (:mod:`leaf_engine.composite`); read for every
job, so a set without them (the S2 10 m sets) is composited by the same rule."""

VALID_REFLECTANCE = (-0.005, 1.05)
"""Reflectance outside this range makes a pixel invalid (QC bit 2), as in the ancestor tool."""


@dataclass(frozen=True)
class Band:
    """One spectral input: its network input name, Earth Engine band name and STAC asset keys."""

    net_input: str
    ee_band: str
    stac_keys: tuple[str, ...]
    common_name: str
    eo_v2_name: str = ""
    """The band's common name in the eo extension v2 (STAC 1.1 ``bands[].eo:common_name``) where it differs:
    the red edges are ``rededge071``/``075``/``078`` there (Copernicus Data Space), ``rededge1``/``2``/``3`` in v1."""

    @property
    def common_names(self) -> tuple[str, ...]:
        return (self.common_name, self.eo_v2_name) if self.eo_v2_name else (self.common_name,)


# ----------------------------------------------------------------------------------------------- quality layers
# Which pixels are clear, as the authors define it (CCRS LEAF-Toolbox, github.com/rfernand387/LEAF-Toolbox, the
# Sentinel-2 and Landsat-8 modules: S2MaskLand / S2MaskClear, L08MaskLand / L08MaskClear). Both executors apply
# the same table: Earth Engine in backends/gee/masks.py, the local engine in backends/local/masks.py.

SCL_CLEAR_CLASSES: frozenset[int] = frozenset({4, 5})
"""S2 scene classification classes that are clear: 4 vegetation, 5 not vegetated. LEAF-Toolbox S2MaskLand keeps
only these, so 2 (dark area / terrain shadow), 6 (water), 7 (unclassified) and every cloud, shadow, snow and
no-data class are invalid."""
SCL_INVALID_CLASSES: frozenset[int] = frozenset(range(256)) - SCL_CLEAR_CLASSES
S2_QA60_INVALID_BITS: tuple[int, ...] = (10, 11)
"""S2 QA60: opaque clouds (10), cirrus (11) — LEAF-Toolbox S2MaskClear."""
S2_CLASSI_BANDS: tuple[str, ...] = ("MSK_CLASSI_OPAQUE", "MSK_CLASSI_CIRRUS")
"""The cloud classification bands that replace QA60 from processing baseline 04.00 (QA60 is empty there)."""
QA_PIXEL_INVALID_BITS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 7)
"""Landsat C2 QA_PIXEL: fill (0), dilated cloud (1), cirrus (2), cloud (3), cloud shadow (4), snow (5), water (7):
the union of LEAF-Toolbox L08MaskLand (0, 4, 5, 7) and L08MaskClear (1-5)."""


@dataclass(frozen=True)
class QualityLayer:
    """One quality layer of a sensor's products and the rule by which it makes a pixel invalid (QC bit 2)."""

    band: str
    """Earth Engine band name; also the default STAC asset key (lower case)."""
    stac_keys: tuple[str, ...]
    clear_classes: frozenset[int] | None = None
    """A class layer: only these values are clear."""
    invalid_bits: tuple[int, ...] = ()
    """A bit layer: any of these bits set is invalid."""
    any_nonzero: bool = False
    """Any non-zero value is invalid (QA_RADSAT, MSK_CLASSI)."""
    optional: bool = False
    """Absent from some products, or masked where it has nothing to say: then it flags nothing (the same
    fallback on both executors). A required layer's masked / nodata pixels are invalid."""
    flags_water: bool = False
    """The layer marks inland water (so the spectral water test is not needed where the product defines it)."""
    water_flag_if: tuple[tuple[str, str], ...] = ()
    """Where the layer's water flag can be trusted only for some products: (item property, regular expression)
    pairs, any of which must match (``collection`` is the item's collection id). Empty: wherever it is present."""
    why: str = ""


S2_QUALITY: tuple[QualityLayer, ...] = (
    QualityLayer("SCL", ("scl", "SCL"), clear_classes=SCL_CLEAR_CLASSES, flags_water=True,
                 why="scene classification: keep vegetation (4) and not-vegetated (5) only (LEAF-Toolbox)"),
    QualityLayer("QA60", ("qa60", "QA60"), invalid_bits=S2_QA60_INVALID_BITS, optional=True,
                 why="opaque cloud (10) and cirrus (11) bits (LEAF-Toolbox S2MaskClear); empty since baseline 04.00"),
    *(QualityLayer(b, (b.lower(), b), any_nonzero=True, optional=True,
                   why="cloud classification of baseline >= 04.00 (replaces QA60): any flag")
      for b in S2_CLASSI_BANDS),
)
LANDSAT_QUALITY: tuple[QualityLayer, ...] = (
    QualityLayer("QA_PIXEL", ("qa_pixel", "QA_PIXEL"), invalid_bits=QA_PIXEL_INVALID_BITS, flags_water=True,
                 # USGS Collection 2 defines bit 7 (water); a QA_PIXEL-style layer translated from another product
                 # (e.g. Geoscience Australia NBAR pixel quality, which flags only the sea) does not.
                 water_flag_if=(("landsat:collection_number", r"0?2"), ("collection", r"(?i).*(c2|c02).*")),
                 why="fill, dilated cloud, cirrus, cloud, shadow, snow, water bits (LEAF-Toolbox L08MaskLand/Clear)"),
    QualityLayer("QA_RADSAT", ("qa_radsat", "QA_RADSAT"), any_nonzero=True, optional=True,
                 why="radiometric saturation (or dropped/terrain-occluded pixel) in any band"),
)


@dataclass(frozen=True)
class WaterTest:
    """A spectral water test for inputs whose quality layer cannot flag inland water."""

    green: str
    nir: str
    threshold: float
    name: str
    cite: str
    source: str

    def describe(self) -> str:
        return f"{self.name} = ({self.green} - {self.nir}) / ({self.green} + {self.nir}) > {self.threshold}"


WATER_TEST = WaterTest(
    "green", "nir08", 0.0, "NDWI", "McFeeters 1996",
    "McFeeters, S. K. (1996), The use of the Normalized Difference Water Index (NDWI) in the delineation of open "
    "water features, Int. J. Remote Sensing 17(7):1425-1432: open water has NDWI > 0, vegetation and soil < 0")
"""Applied to scenes with no quality layer that flags water (e.g. THEIA L3A without SCL, or Geoscience
Australia NBAR whose pixel quality flags only the sea): Lake Burley Griffin must not come out as vegetation.
Both bands (common names) are read for every job (they are the compositing score's bands)."""


def layers_rule(quality: Sequence[QualityLayer]) -> str:
    """The rule of a sensor's quality layers in words (optional layers apply where present)."""
    return "; ".join(f"{q.band}{' (where present)' if q.optional else ''}: {q.why}" for q in quality)


@dataclass(frozen=True)
class Sensor:
    id: str
    title: str
    qc_code: int
    """Written in QC bits 3–7 (value qc_code·8)."""
    first_year: int
    last_year: int | None
    default_resolution: int
    ee_collection: str
    bands: tuple[Band, ...]
    dn_scale: float
    dn_offset: float
    """Reflectance = DN·dn_scale + dn_offset for the Earth Engine collection, for STAC items lacking raster:bands,
    and (the offset) for items whose raster:bands state this scale but no offset (Landsat C2: −0.2)."""
    networks: dict[str, str] = field(default_factory=dict)
    """Shipped network set id per algorithm (``SL2P``, ``SL2P-CCRS``): the default sets, whose inputs are
    :attr:`bands`."""
    ee_toa_collection: str | None = None
    """Landsat: the C2 TOA collection whose angle bands (SAA/SZA/VAA/VZA) give per-pixel geometry."""
    mask_asset: str = ""
    """STAC asset key (lower case) of the quality layer: ``scl`` or ``qa_pixel``."""
    saturation_asset: str = ""
    """Landsat: STAC asset key of the radiometric saturation layer (``qa_radsat``); any bit set = invalid."""
    saturation_band: str = ""
    """The same layer's Earth Engine band name (``QA_RADSAT``)."""
    extra_bands: tuple[Band, ...] = ()
    """Bands the sensor supplies beyond the default sets' inputs (Sentinel-2's 10 m B2, B8), read only for a set
    that asks for them."""
    other_networks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Further shipped sets per algorithm that this sensor supplies the inputs of (chosen with ``networks``)."""
    quality: tuple[QualityLayer, ...] = ()
    """The quality layers and their rules (see :class:`QualityLayer`)."""
    orbit_altitude_km: float = 0.0
    """Mean orbit altitude: turns an item's ``view:off_nadir`` (at the sensor) into the view zenith (at the
    ground) when it gives no incidence angle."""
    boa_offset_from_baseline: bool = False
    """Raw products carry the −1000 DN BOA offset from processing baseline 04.00 (Sentinel-2 L2A)."""
    cloud_property: str = ""
    """Earth Engine scene property with the scene cloud cover in percent (the compositing score's cloud term)."""
    angle_source: str = ""
    """Where the Earth Engine path takes the sun/view geometry: ``toa_angle_bands`` (the joined C2 TOA scene's
    per-pixel SAA/SZA/VAA/VZA bands) or ``scene_metadata`` (the S2 mean angle properties)."""
    platforms: tuple[str, ...] = ()
    """STAC ``platform`` values of this sensor, normalised (lower case, no ``-``/``_``/space): ``sentinel2a``."""
    stac_collections: tuple[str, ...] = ()
    """Collection ids of the public STAC catalogues (Earth Search, Planetary Computer, Copernicus Data Space)
    that hold this sensor's products (shared by several Landsat sensors: ``platform`` tells them apart)."""

    @property
    def qc_value(self) -> int:
        return self.qc_code << 3

    @property
    def is_landsat(self) -> bool:
        return self.id.startswith("L")

    def band_names(self) -> tuple[str, ...]:
        return tuple(b.net_input for b in self.bands)

    @property
    def supplied_bands(self) -> tuple[Band, ...]:
        """Every spectral band the sensor supplies (default inputs first)."""
        return (*self.bands, *self.extra_bands)

    def band(self, net_input: str) -> Band:
        for b in self.supplied_bands:
            if b.net_input == net_input:
                return b
        raise KeyError(f"{self.id} supplies no band {net_input!r}")

    def bands_for(self, inputs: Sequence[str] | None = None) -> tuple[Band, ...]:
        """The bands one job reads: a network set's spectral inputs in the set's order, then the bands of the
        compositing score (red, nir08) when the set lacks them. ``None``: the default sets' inputs."""
        if inputs is None:
            return self.bands
        require_network_inputs(self.id, "the network set", inputs)
        chosen = [self.band(n) for n in inputs if n not in ANGLE_INPUTS]
        for common in SCORE_BANDS:
            if not any(b.common_name == common for b in chosen):
                chosen.append(next(b for b in self.supplied_bands if b.common_name == common))
        return tuple(chosen)


def _b(net: str, ee: str, common: str, *keys: str, eo_v2: str = "") -> Band:
    return Band(net_input=net, ee_band=ee, stac_keys=(common, *keys), common_name=common, eo_v2_name=eo_v2)


_S2_BANDS = (
    _b("B3", "B3", "green", "B03"),
    _b("B4", "B4", "red", "B04"),
    _b("B5", "B5", "rededge1", "rededge", "B05", eo_v2="rededge071"),
    _b("B6", "B6", "rededge2", "B06", eo_v2="rededge075"),
    _b("B7", "B7", "rededge3", "B07", eo_v2="rededge078"),
    _b("B8A", "B8A", "nir08", "B8A"),
    _b("B11", "B11", "swir16", "B11"),
    _b("B12", "B12", "swir22", "B12"),
)
_S2_10M_EXTRA = (
    _b("B2", "B2", "blue", "B02"),
    _b("B8", "B8", "nir", "B08"),
)
"""The 10 m bands the S2 10 m sets need besides B3 and B4 (Earth Search: ``blue``/``nir``; others ``B02``/``B08``)."""
_OLI_BANDS = (
    _b("SR_B3", "SR_B3", "green", "SR_B3", "B3"),
    _b("SR_B4", "SR_B4", "red", "SR_B4", "B4"),
    _b("SR_B5", "SR_B5", "nir08", "SR_B5", "B5", "nir"),
    _b("SR_B6", "SR_B6", "swir16", "SR_B6", "B6", "swir1"),
    _b("SR_B7", "SR_B7", "swir22", "SR_B7", "B7", "swir2"),
)
_TM_BANDS = (
    _b("green(B2)", "SR_B2", "green", "SR_B2", "B2"),
    _b("red(B3)", "SR_B3", "red", "SR_B3", "B3"),
    _b("nir(B4)", "SR_B4", "nir08", "SR_B4", "B4", "nir"),
    _b("swir1(B5)", "SR_B5", "swir16", "SR_B5", "B5", "swir1"),
    _b("swir2(B7)", "SR_B7", "swir22", "SR_B7", "B7", "swir2"),
)
_C2_SCALE, _C2_OFFSET = 2.75e-5, -0.2

SENSORS: dict[str, Sensor] = {
    s.id: s
    for s in (
        Sensor(
            "S2_SR",
            "Sentinel-2 MSI L2A",
            21,
            2017,
            None,
            20,
            "COPERNICUS/S2_SR_HARMONIZED",
            _S2_BANDS,
            1e-4,
            0.0,
            {"SL2P": "leaf_sl2p_s2_20m", "SL2P-CCRS": "leaf_sl2pccrs_s2_20m"},
            mask_asset="scl",
            extra_bands=_S2_10M_EXTRA,
            other_networks={"SL2P": ("leaf_sl2p_s2_10m",), "SL2P-CCRS": ("leaf_sl2pccrs_s2_10m",)},
            quality=S2_QUALITY,
            orbit_altitude_km=786.0,
            boa_offset_from_baseline=True,
            cloud_property="CLOUDY_PIXEL_PERCENTAGE",
            angle_source="scene_metadata",
            platforms=("sentinel2", "sentinel2a", "sentinel2b", "sentinel2c"),
            stac_collections=("sentinel-2-l2a", "sentinel-2-c1-l2a"),
        ),
        Sensor(
            "L5_SR",
            "Landsat-5 TM C2 L2",
            5,
            1984,
            2012,
            30,
            "LANDSAT/LT05/C02/T1_L2",
            _TM_BANDS,
            _C2_SCALE,
            _C2_OFFSET,
            {"SL2P": "leaf_sl2p_l5"},
            "LANDSAT/LT05/C02/T1_TOA",
            "qa_pixel",
            "qa_radsat",
            "QA_RADSAT",
            quality=LANDSAT_QUALITY,
            orbit_altitude_km=705.0,
            cloud_property="CLOUD_COVER",
            angle_source="toa_angle_bands",
            platforms=("landsat5", "landsat05"),
            stac_collections=("landsat-c2-l2",),
        ),
        Sensor(
            "L7_SR",
            "Landsat-7 ETM+ C2 L2",
            7,
            1999,
            2023,
            30,
            "LANDSAT/LE07/C02/T1_L2",
            _TM_BANDS,
            _C2_SCALE,
            _C2_OFFSET,
            {"SL2P": "leaf_sl2p_l7"},
            "LANDSAT/LE07/C02/T1_TOA",
            "qa_pixel",
            "qa_radsat",
            "QA_RADSAT",
            quality=LANDSAT_QUALITY,
            orbit_altitude_km=705.0,
            cloud_property="CLOUD_COVER",
            angle_source="toa_angle_bands",
            platforms=("landsat7", "landsat07"),
            stac_collections=("landsat-c2-l2",),
        ),
        Sensor(
            "L8_SR",
            "Landsat-8 OLI C2 L2",
            8,
            2013,
            None,
            30,
            "LANDSAT/LC08/C02/T1_L2",
            _OLI_BANDS,
            _C2_SCALE,
            _C2_OFFSET,
            {"SL2P": "leaf_sl2p_l8", "SL2P-CCRS": "leaf_sl2pccrs_l8"},
            "LANDSAT/LC08/C02/T1_TOA",
            "qa_pixel",
            "qa_radsat",
            "QA_RADSAT",
            quality=LANDSAT_QUALITY,
            orbit_altitude_km=705.0,
            cloud_property="CLOUD_COVER",
            angle_source="toa_angle_bands",
            platforms=("landsat8", "landsat08"),
            stac_collections=("landsat-c2-l2",),
        ),
        Sensor(
            "L9_SR",
            "Landsat-9 OLI-2 C2 L2",
            9,
            2021,
            None,
            30,
            "LANDSAT/LC09/C02/T1_L2",
            _OLI_BANDS,
            _C2_SCALE,
            _C2_OFFSET,
            {"SL2P": "leaf_sl2p_l9", "SL2P-CCRS": "leaf_sl2pccrs_l9"},
            "LANDSAT/LC09/C02/T1_TOA",
            "qa_pixel",
            "qa_radsat",
            "QA_RADSAT",
            quality=LANDSAT_QUALITY,
            orbit_altitude_km=705.0,
            cloud_property="CLOUD_COVER",
            angle_source="toa_angle_bands",
            platforms=("landsat9", "landsat09"),
            stac_collections=("landsat-c2-l2",),
        ),
    )
}

EARTH_RADIUS_KM = 6371.0

# Scene-mean view angles of STAC items, in the convention of the Earth Engine path (the B8A mean incidence angles
# of the S2 metadata: zenith at the ground, azimuth of the line of sight from the ground towards the sensor).
S2_VIEW_BAND = "B8A"
"""The band whose mean incidence angles the Earth Engine path uses (``MEAN_INCIDENCE_*_ANGLE_B8A``)."""
B8A_VIEW_PROPERTIES: tuple[str, str] = ("s2:mean_incidence_zenith_angle_b8a", "s2:mean_incidence_azimuth_angle_b8a")
"""Item properties that state exactly that band's angles (zenith, azimuth). Next come the ``view:incidence_angle``
/ ``view:azimuth`` of the band's own asset (Copernicus Data Space gives them per band), then the properties below."""
VIEW_ZENITH_PROPERTIES: tuple[str, ...] = (B8A_VIEW_PROPERTIES[0], "s2:mean_view_zenith", "view:incidence_angle")
VIEW_AZIMUTH_PROPERTIES: tuple[str, ...] = (B8A_VIEW_PROPERTIES[1], "s2:mean_view_azimuth")
STAC_VIEW_AZIMUTH = "view:azimuth"
"""STAC view extension: "the angle measured from the sub-satellite point between the scene center and true north"
— the direction from the sensor to the scene, so the ground-to-sensor azimuth is this + 180°. Except for
Sentinel-2: stactools-sentinel2 (the package behind Planetary Computer's items; its current releases write it)
copies the granule metadata's mean viewing incidence azimuth, already ground-to-sensor: read as published."""
S2_GRANULE_METADATA_ASSETS: tuple[str, ...] = ("granule_metadata", "granule-metadata")
"""Asset keys of the S2 tile metadata (``MTD_TL.xml``: Earth Search, Planetary Computer), whose B8A mean viewing
incidence angles give the view geometry where the item's properties do not (neither catalogue has them there)."""
S2_GRANULE_VIEW_BAND_ID = "8"
"""``bandId`` of :data:`S2_VIEW_BAND` (B8A) in the granule metadata's band numbering (B1 = 0 … B8 = 7, B8A = 8)."""

S2_OFFSET_BASELINE = 4.0
S2_BOA_OFFSET_DN = -1000
"""Sentinel-2 L2A from processing baseline 04.00 on: reflectance = (DN − 1000) / 10000 (ESA, Jan 2022).
Earth Engine's harmonised collection has already removed it; raw L2A products (STAC catalogues) have not."""
S2_OFFSET_SINCE = date(2022, 1, 25)
"""First acquisitions processed with baseline 04.00 (ESA: deployed 25 January 2022; Earth Engine's
S2_SR_HARMONIZED shifts scenes "with PROCESSING_BASELINE '04.00' or above (after 2022-01-25)"). Used when an
item states no baseline in any known spelling."""
S2_BASELINE_PROPERTIES: tuple[str, ...] = (
    "s2:processing_baseline",  # Earth Search, Planetary Computer (stactools-sentinel2): "05.09"
    "processing:version",  # Copernicus Data Space STAC (processing extension): "05.09"
    "sentinel2:processing_baseline", "sentinel:processing_baseline",  # older catalogue spellings
    "processingBaseline",  # Copernicus Data Space OData / OpenSearch attribute
)
S2_BASELINE_ID_PROPERTIES: tuple[str, ...] = ("s2:product_uri", "s2:datatake_id", "s2:datastrip_id", "id")
"""Where the baseline is only part of a name: product URI ``..._N0509_...`` or datatake id ``..._N05.09``."""
S2_BOA_REMOVED_PROPERTIES: tuple[str, ...] = ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied")
"""Earth Search ``sentinel-2-l2a`` (Collection 0): ``true`` when Element 84 already subtracted the BOA offset from
the COG's DN. Its ``raster:bands`` still state ``offset: -0.1`` then; the maintainers call the flag the truth
(github.com/Element84/earth-search issue 9; cirrus-geo/cirrus-earth-search issues 21, 25: COG = JP2 − 1000)."""
S2_BOA_REMOVED_COLLECTIONS: tuple[str, ...] = ("sentinel-2-l2a",)
"""The collections whose items' flag above is read (or items that name no collection). Earth Search's Collection 1
(``sentinel-2-c1-l2a``, ESA's reprocessing from baseline 05.00) keeps ESA's DN: its stated offsets apply."""

MERGED: dict[str, tuple[str, ...]] = {"LS_SR": ("L8_SR", "L9_SR")}
"""Request sensors that merge several collections; each observation keeps its own sensor code and networks."""

REQUEST_SENSORS: tuple[str, ...] = (*SENSORS, *MERGED)


def members(request_sensor: str) -> tuple[Sensor, ...]:
    """The concrete sensors behind a request's ``sensor`` value (``LS_SR`` → L8 and L9)."""
    key = request_sensor.upper()
    if key in MERGED:
        return tuple(SENSORS[m] for m in MERGED[key])
    return (SENSORS[key],)


def sensor_years(request_sensor: str) -> tuple[int, int | None]:
    """First and last year any member sensor observed (``None`` = still flying)."""
    ms = members(request_sensor)
    lasts = [m.last_year for m in ms]
    return min(m.first_year for m in ms), None if None in lasts else max(lasts)  # type: ignore[type-var]


def missing_inputs(sensor: Sensor, inputs: Sequence[str]) -> tuple[str, ...]:
    """The inputs of a network set that ``sensor`` does not supply (angles are always supplied)."""
    supplied = {b.net_input for b in sensor.supplied_bands}
    return tuple(n for n in inputs if n not in ANGLE_INPUTS and n not in supplied)


def network_inputs_problem(request_sensor: str, set_id: str, inputs: Sequence[str]) -> str | None:
    """The one rule for accepting a network set: every member sensor supplies each of its inputs.

    Returns what is wrong (to report under the ``networks`` key) or None. Request validation and both executors
    call it, so a set no executor can feed is refused before any work starts."""
    for m in members(request_sensor):
        missing = missing_inputs(m, inputs)
        if missing:
            supplied = ", ".join(b.net_input for b in m.supplied_bands)
            return (f"network set {set_id} needs inputs {', '.join(missing)}, which sensor {m.id} does not supply "
                    f"(it supplies {supplied} and the angles): choose a set made for {m.id}")
    return None


def network_set_problem(request_sensor: str, source: str) -> str | None:
    """:func:`network_inputs_problem` for a set named by shipped id or local path (what request validation can
    open); a remote set (``gs://``, ``http(s)://``) is checked by :func:`require_network_inputs` when loaded."""
    from .errors import NetworkFileError
    from .sl2p.networks import load_network_set  # here: the network module reads this one's sensor facts

    if source.startswith(("gs://", "http://", "https://")):
        return None
    try:
        nets = load_network_set(source)
    except NetworkFileError as e:
        return str(e)
    return network_inputs_problem(request_sensor, nets.set_id, nets.inputs)


def require_network_inputs(request_sensor: str, set_id: str, inputs: Sequence[str]) -> None:
    """Raise :class:`~leaf_engine.errors.NetworkFileError` unless every member sensor supplies the set's inputs."""
    from .errors import NetworkFileError

    problem = network_inputs_problem(request_sensor, set_id, inputs)
    if problem:
        raise NetworkFileError(problem)


def extra_network_sets(sensor: Sensor) -> Iterator[tuple[str, str]]:
    """(set id, algorithm) of the shipped sets beyond the defaults that ``sensor`` can run."""
    for algorithm, ids in sensor.other_networks.items():
        for set_id in ids:
            yield set_id, algorithm


def normalised_platform(value: str) -> str:
    return re.sub(r"[-_ ]", "", value.lower())


def sensor_for_platform(platform: str | None, collection: str | None = None) -> Sensor | None:
    """The LEAF sensor of a STAC item from its ``platform`` (``sentinel-2a``, ``Sentinel-2B``, ``landsat-8``…),
    else its collection id when that names one sensor (or starts with a platform, e.g. ``sentinel-2-l2a``)."""
    if platform:
        key = normalised_platform(platform)
        for s in SENSORS.values():
            if key in s.platforms:
                return s
    if collection:
        owners = [s for s in SENSORS.values() if collection in s.stac_collections]
        if len(owners) == 1:
            return owners[0]
        key = normalised_platform(collection)
        for s in SENSORS.values():
            if any(key.startswith(p) for p in s.platforms):
                return s
    return None


def mask_rule(sensor: Sensor, present: Sequence[str] | None = None, water_test: bool = False) -> str:
    """Which rule masks ``sensor``'s scenes, in the words both executors record (the local ``mask_rule`` tag,
    the STAC items' ``leaf:mask_rule``): its quality layers (:attr:`Sensor.quality`), the spectral water test where
    it applied, and (when known: the local engine reads the items) the quality layers a scene actually had."""
    text = f"{sensor.id}: {layers_rule(sensor.quality) or 'no quality layer: nodata only'}"
    if water_test:
        text += f"; inland water: {WATER_TEST.describe()} ({WATER_TEST.cite})"
    if present is not None:
        text += f" (layers present: {', '.join(present) or 'none, nodata only'})"
    return text


def request_mask_rule(request_sensor: str) -> str:
    """:func:`mask_rule` of every member sensor of a request: what the Earth Engine path applies (its
    collections' quality layers are known, and flag inland water, so no spectral water test)."""
    return " | ".join(mask_rule(m) for m in members(request_sensor))


def sensor_by_qc_code(code: int) -> Sensor:
    for s in SENSORS.values():
        if s.qc_code == code:
            return s
    raise KeyError(f"no sensor has QC code {code}")


def qa_pixel_invalid_mask() -> int:
    """Bit mask over QA_PIXEL of every invalid flag."""
    m = 0
    for b in QA_PIXEL_INVALID_BITS:
        m |= 1 << b
    return m
