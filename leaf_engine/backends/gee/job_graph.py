"""The whole Earth Engine computation of one job: scenes → clear-sky composite → SL2P → encoded products."""

from __future__ import annotations

from typing import Any

from shapely.geometry import mapping

from ... import sensors
from ...sl2p.networks import NetworkSet, load_network_set
from . import composite, landcover, sl2p_graph


def region_geometry(job: Any) -> Any:
    """The job's region (lon/lat polygon, edges already densified) as a planar Earth Engine geometry."""
    import ee

    return ee.Geometry(mapping(job.region.geometry), None, False)


def network_sets(job: Any) -> dict[int, NetworkSet]:
    """Network set per member sensor code (the request's own file when it names one); each set's inputs must be
    supplied by its sensor (:func:`leaf_engine.sensors.require_network_inputs`)."""
    out = {}
    for s in sensors.members(job.sensor):
        nets = load_network_set(job.network_set(s.id))
        sensors.require_network_inputs(s.id, nets.set_id, nets.inputs)
        out[s.qc_code] = nets
    return out


def job_image(job: Any) -> Any:
    """One image whose bands are the job's product tokens (``LAI``, ``QC``, ``Date`` ...), each encoded."""
    members = sensors.members(job.sensor)
    geometry = region_geometry(job)
    nets = network_sets(job)
    comp = composite.best_pixel(members, geometry, job.start, job.end,
                                {s.id: nets[s.qc_code].inputs for s in members})
    code_band = comp.select(composite.SENSOR_CODE)
    valid = code_band.mask().gt(0)
    # unmask(..., False) below and in sl2p_graph: fill past the composite's footprint (no scene at all there),
    # so such pixels get "invalid" QC and nodata products as locally, instead of staying masked.
    lc = landcover.landcover_image() if job.algorithm == "SL2P-CCRS" else None
    img = sl2p_graph.products_image(
        comp, nets, job.products, valid=valid,
        sensor_code=code_band.unmask(members[0].qc_code, False), landcover=lc, date=comp.select(composite.DOY),
    )
    # Custom polygons: pixels of the export rectangle outside the polygon are no data.
    return img if job.region.tile is not None else img.clip(geometry)
