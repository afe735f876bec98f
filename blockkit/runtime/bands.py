"""Bands by common name (`red`, `nir`, ...): one multi-band file or one file per band, read as one stack.

A staged STAC item's feature carries its assets (see `blockkit.stac`, the data_path rule); each asset may
describe its bands with `eo:bands` (STAC 1.0: `common_name`, `name`) or `bands` (STAC 1.1:
`eo:common_name`, `name`). Item-level `eo:bands` in the properties describe the data_path file. Without
any of that, the band descriptions inside the data_path raster are used. A name matches a band's common
name, its name (`B04`), or the key of a single-band asset.

`band_stack` writes a small VRT that stacks the chosen bands, in the order asked, on the finest grid among
them (coarser bands are resampled nearest-neighbour by GDAL on read), so `map_windows` and rasterio read a
per-band Sentinel-2 item like one multi-band file, window by window, with no copy of the data.

    with band_stack(feature, ctx.input_dir, ["red", "nir"]) as stack:
        map_windows(stack, ctx.output_path("ndvi.tif"), ndvi, bands=(1, 2), dtype="float32")
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from blockkit.contract._datajson import check_data_path, data_path_of
from blockkit.contract.errors import WrongInputError


@dataclass(frozen=True)
class BandRef:
    """One band: the file holding it, its 1-based index there, and the href it came from (checked on use)."""

    path: Path
    band: int
    name: str
    href: str = ""


def _band_list(holder: Mapping[str, Any]) -> list[dict[str, Any]]:
    for key in ("eo:bands", "bands"):
        value = holder.get(key)
        if isinstance(value, list) and all(isinstance(b, dict) for b in value):
            return list(value)
    return []


def _names(band: Mapping[str, Any]) -> list[str]:
    out = []
    for key in ("common_name", "eo:common_name", "name"):
        value = band.get(key)
        if isinstance(value, str) and value:
            out.append(value.lower())
    return out


def _local_file(feature: Mapping[str, Any], href: str, base_dir: Path, what: str) -> Path:
    problem = check_data_path(href, base_dir)
    if problem:
        raise WrongInputError(f"feature {feature.get('id', '?')!r} {what}: {problem.replace('up42.data_path', 'href')}")
    return base_dir / href


def band_index(feature: Mapping[str, Any], base_dir: Path | str) -> dict[str, BandRef]:
    """Every band of a feature by each of its lower-case names (common name, name, single-band asset key)."""
    base_dir = Path(base_dir)
    found: dict[str, BandRef] = {}

    def add(names: list[str], ref: BandRef) -> None:
        for n in names:
            found.setdefault(n, ref)

    assets = feature.get("assets")
    if isinstance(assets, Mapping):
        for key, asset in assets.items():
            if not isinstance(asset, Mapping) or not isinstance(asset.get("href"), str) or "://" in asset["href"]:
                continue
            bands = _band_list(asset)
            if not bands:
                continue
            # checked when chosen (locate_bands): a broken asset the caller does not ask for does not matter
            path = base_dir / asset["href"]
            for i, band in enumerate(bands, start=1):
                names = _names(band) + ([str(key).lower()] if len(bands) == 1 else [])
                add(names, BandRef(path, i, names[0] if names else str(key), asset["href"]))
    data_path = data_path_of(dict(feature))
    props = feature.get("properties") or {}
    if data_path and (bands := _band_list(props)):
        for i, band in enumerate(bands, start=1):
            names = _names(band)
            add(names, BandRef(base_dir / data_path, i, names[0] if names else str(i), data_path))
    if not found and data_path:
        path = _local_file(feature, data_path, base_dir, "data_path")
        import rasterio
        from rasterio.errors import RasterioIOError

        try:
            with rasterio.open(path) as src:
                descriptions = list(src.descriptions)
        except RasterioIOError:
            return found
        for i, desc in enumerate(descriptions, start=1):
            if desc:
                add([desc.lower()], BandRef(path, i, desc.lower(), data_path))
    return found


def locate_bands(feature: Mapping[str, Any], base_dir: Path | str, names: Sequence[str]) -> list[BandRef]:
    """The bands named (in that order), or a WrongInputError naming what the feature has."""
    index = band_index(feature, base_dir)
    missing = [n for n in names if n.lower() not in index]
    if missing:
        have = ", ".join(sorted(index)) or "no named bands"
        raise WrongInputError(
            f"feature {feature.get('id', '?')!r}: no band named {', '.join(map(repr, missing))} (it has: {have})"
        )
    refs = [index[n.lower()] for n in names]
    for ref in refs:
        if ref.href:
            _local_file(feature, ref.href, Path(base_dir), f"band {ref.name!r}")
    return refs


def has_bands(feature: Mapping[str, Any], base_dir: Path | str, names: Sequence[str]) -> bool:
    """True when every name resolves to a band of the feature."""
    try:
        locate_bands(feature, base_dir, names)
    except WrongInputError:
        return False
    return True


def stack_vrt(refs: Sequence[BandRef], label: str = "bands") -> str:
    """A VRT (XML) stacking the bands on the finest grid among them; they must share CRS and extent."""
    import numpy as np
    import rasterio

    infos = []
    for ref in refs:
        with rasterio.open(ref.path) as src:
            if not 1 <= ref.band <= src.count:
                raise WrongInputError(f"{label}: {ref.path.name} has {src.count} band(s), not band {ref.band}")
            infos.append((src.crs, src.transform, src.width, src.height, src.dtypes[ref.band - 1], src.nodatavals[ref.band - 1],
                          src.bounds))
    crs0 = infos[0][0]
    for ref, info in zip(refs, infos):
        if info[0] != crs0:
            raise WrongInputError(f"{label}: band {ref.name!r} ({ref.path.name}) is in another CRS than the others")
    finest = min(range(len(infos)), key=lambda i: abs(infos[i][1].a))
    crs, transform, width, height, _, _, bounds = infos[finest]
    tolerance = max(abs(transform.a), abs(transform.e))
    for ref, info in zip(refs, infos):
        b = info[6]
        if any(abs(x - y) > max(tolerance, abs(info[1].a)) for x, y in zip(b, bounds)):
            raise WrongInputError(f"{label}: band {ref.name!r} ({ref.path.name}) covers another extent than the others")
    dtype = np.result_type(*[np.dtype(i[4]) for i in infos]).name
    gdal_type = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
                 "int32": "Int32", "float32": "Float32", "float64": "Float64", "int64": "Int64",
                 "uint64": "UInt64"}.get(dtype, "Float64")
    gt = ", ".join(repr(float(v)) for v in transform.to_gdal())
    parts = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
             f"<SRS>{escape(crs.to_wkt())}</SRS>" if crs else "", f"<GeoTransform>{gt}</GeoTransform>"]
    for i, (ref, info) in enumerate(zip(refs, infos), start=1):
        nodata = info[5]
        nd = f"<NoDataValue>{nodata!r}</NoDataValue>" if nodata is not None and not math.isnan(nodata) else (
            "<NoDataValue>nan</NoDataValue>" if nodata is not None else "")
        parts.append(
            f'<VRTRasterBand dataType="{gdal_type}" band="{i}"><Description>{escape(ref.name)}</Description>{nd}'
            f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(str(ref.path.resolve()))}</SourceFilename>'
            f"<SourceBand>{ref.band}</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{info[2]}" ySize="{info[3]}"/>'
            f'<DstRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/></SimpleSource></VRTRasterBand>'
        )
    parts.append("</VRTDataset>")
    return "".join(parts)


@contextmanager
def band_stack(
    feature: Mapping[str, Any], base_dir: Path | str, names: Sequence[str], *, scratch: Path | None = None
) -> Iterator[Path]:
    """A VRT file stacking the named bands of a feature (band i = names[i-1]), removed afterwards.

    A context manager: ``with band_stack(feature, ctx.input_dir, ["red", "nir"]) as vrt: ...``.

    Parameters:
        feature: a data.json feature whose data_path or `assets` hold the bands.
        base_dir: the folder data.json's relative paths start from (the block's input folder).
        names: the bands to stack, in output order, each a common name, band name or single-band
            asset key (case-insensitive; see `band_index`).
        scratch: where the temporary VRT is written (default: the system's temporary folder).
    """
    refs = locate_bands(feature, base_dir, names)
    xml = stack_vrt(refs, f"feature {feature.get('id', '?')!r}")
    with tempfile.TemporaryDirectory(prefix="blockkit-bands-", dir=scratch) as tmp:
        path = Path(tmp) / "bands.vrt"
        path.write_text(xml)
        yield path


__all__ = ["BandRef", "band_index", "band_stack", "has_bands", "locate_bands", "stack_vrt"]
