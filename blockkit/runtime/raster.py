"""Raster helpers for block authors: windowed processing, Cloud-Optimized GeoTIFFs, quicklooks.

Imported only on demand (``from blockkit.runtime.raster import map_windows``):
``import blockkit`` must stay free of numpy and rasterio, so nothing in the
package's ``__init__`` imports this module.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.env import get_gdal_config, set_gdal_config
from rasterio.windows import Window

from blockkit.contract.errors import InvalidArgument
from blockkit.runtime._progress import ProgressReporter, runner_wants_progress

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray

__all__ = ["map_windows", "iter_windows", "write_cog", "write_quicklook", "write_vector_quicklook"]

WindowFunction = Callable[["NDArray[Any]"], "ArrayLike"]

# GDAL's default block cache is 5% of RAM; on a big machine it happily holds
# a whole output raster of dirty blocks. A few MB of tiles is all a window
# loop needs, and a small cache is what keeps peak memory bounded.
_CACHE_BYTES = 48 * 1024 * 1024
# Workers only read: a few decoded source tiles are all they ever reuse.
_WORKER_CACHE_BYTES = 16 * 1024 * 1024
_DEFAULT_WINDOW = 512
# Windows handed to the pool ahead of the writer: enough to keep every worker
# busy while the parent writes, few enough that results never pile up.
_IN_FLIGHT_PER_PROCESS = 3


@contextmanager
def _bounded_gdal_cache(limit: int = _CACHE_BYTES) -> Iterator[None]:
    """Lower GDAL's process-wide block cache for the duration, then restore it."""
    previous = get_gdal_config("GDAL_CACHEMAX")
    set_gdal_config("GDAL_CACHEMAX", limit)
    try:
        yield
    finally:
        if previous is not None:
            set_gdal_config("GDAL_CACHEMAX", previous)


def iter_windows(width: int, height: int, window_size: tuple[int, int]) -> Iterator[Window]:
    """Yield the windows of a (rows, cols) grid anchored at the raster's origin, row by row."""
    rows, cols = window_size
    for row in range(0, height, rows):
        for col in range(0, width, cols):
            yield Window(col, row, min(cols, width - col), min(rows, height - row))


def _default_window_size(src: Any) -> tuple[int, int]:
    """The source's internal tiles when it is tiled with sensible tiles, else 512x512.

    Reading whole tiles means each is decoded once; strips (full-width blocks)
    would make windows as wide as the raster, so they get the default.
    """
    rows, cols = src.block_shapes[0]
    if cols < src.width and 128 <= min(rows, cols) and max(rows, cols) <= 2048:
        return rows, cols
    return _DEFAULT_WINDOW, _DEFAULT_WINDOW


def _output_block_size(window_size: tuple[int, int]) -> tuple[int, int]:
    """Output tiles equal to the windows when TIFF allows it (multiples of 16), so each write fills whole tiles."""
    rows, cols = window_size
    if rows % 16 == 0 and cols % 16 == 0:
        return rows, cols
    return _DEFAULT_WINDOW, _DEFAULT_WINDOW


def _invalid_mask(array: NDArray[Any], nodata: float | None) -> NDArray[np.bool_] | None:
    """Pixels where any band holds the source's nodata value, or None when there is none."""
    if nodata is None:
        return None
    if isinstance(nodata, float) and math.isnan(nodata):
        if not np.issubdtype(array.dtype, np.floating):
            return None
        mask: NDArray[np.bool_] = np.isnan(array).any(axis=0)
        return mask
    mask = (array == nodata).any(axis=0)
    return mask


class _WindowJob:
    """Everything needed to turn one source window into one output block; picklable for workers."""

    def __init__(
        self,
        func: WindowFunction,
        bands: list[int],
        dtype: str,
        count: int,
        nodata: float | None,
    ) -> None:
        self.func = func
        self.bands = bands
        self.dtype = np.dtype(dtype)
        self.count = count
        self.nodata = nodata

    def compute(self, src: Any, window: Window) -> NDArray[Any]:
        """Read the window's bands, apply the author's function, cast and mask nodata."""
        array = src.read(self.bands, window=window)
        result = np.asarray(self.func(array))
        if result.ndim == 2:
            result = result[np.newaxis]
        expected = (self.count, int(window.height), int(window.width))
        if result.shape != expected:
            raise InvalidArgument(
                f"map_windows: the function returned shape {result.shape} for window "
                f"{int(window.col_off)},{int(window.row_off)}; expected {expected} (count, rows, cols)"
            )
        result = result.astype(self.dtype, copy=False)
        if self.nodata is not None:
            invalid = _invalid_mask(array, src.nodata)
            if invalid is not None and invalid.any():
                if result is array or np.shares_memory(result, array):
                    result = result.copy()
                result[:, invalid] = self.nodata
        return result


# One per worker process: the job and the source opened once, reused for every
# window that worker computes (opening a GeoTIFF per window would cost more
# than the window itself).
_worker: dict[str, Any] = {}


def _worker_start(src_path: str, job: _WindowJob) -> None:
    env = rasterio.Env(GDAL_CACHEMAX=_WORKER_CACHE_BYTES)
    env.__enter__()
    _worker["env"] = env
    _worker["src"] = rasterio.open(src_path)
    _worker["job"] = job


def _worker_compute(window: tuple[int, int, int, int]) -> tuple[tuple[int, int, int, int], NDArray[Any]]:
    return window, _worker["job"].compute(_worker["src"], Window(*window))


def map_windows(
    src_path: str | os.PathLike[str],
    dst_path: str | os.PathLike[str],
    func: WindowFunction,
    *,
    dtype: str,
    count: int = 1,
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
    window_size: int | tuple[int, int] | None = None,
    processes: int = 1,
    profile_overrides: dict[str, Any] | None = None,
    start_method: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Apply ``func`` window by window to a GeoTIFF and write a tiled, compressed GeoTIFF.

    The output has the source's size, CRS and transform; it is written beside ``dst_path`` and
    renamed at the end, so a failure never leaves a half-written raster under that name.

    Parameters:
        src_path: the source raster (any format rasterio reads).
        dst_path: the GeoTIFF to write (parent folders are created); returned.
        func: called with a (bands, rows, cols) array of one window of the source; returns a
            (count, rows, cols) or, for ``count=1``, a (rows, cols) array.
        dtype: the output data type (``"float32"``, ``"uint8"``, ...); results are cast to it.
        count: the number of output bands ``func`` returns.
        bands: the 1-based source bands ``func`` receives, in that order (default: all).
        nodata: the output's nodata value (also written where the source is nodata).
        window_size: rows and columns per window (an int for squares); default: the source's
            internal tiles when sensible, else 512x512.
        processes: worker processes computing windows (1: in this process); with more than
            one and a start method other than fork, ``func`` must be picklable.
        profile_overrides: rasterio profile entries that replace the defaults (tiling,
            deflate compression with a predictor, BigTIFF when needed).
        start_method: the multiprocessing start method (default: fork on Linux, else spawn).
        progress: ``progress(done, total)`` is called as windows are written; by default, inside
            a step of the blockkit runner, windows done/total are reported to it as a progress bar.
    """
    src_path, dst_path = Path(src_path), Path(dst_path)
    if processes < 1:
        raise InvalidArgument(f"map_windows: processes must be >= 1, got {processes}")
    if count < 1:
        raise InvalidArgument(f"map_windows: count must be >= 1, got {count}")
    method = start_method or _default_start_method()
    if processes > 1 and method != "fork":
        _require_picklable(func)

    with rasterio.open(src_path) as src:
        band_list = list(bands) if bands is not None else list(range(1, src.count + 1))
        for band in band_list:
            if not 1 <= band <= src.count:
                raise InvalidArgument(f"map_windows: band {band} does not exist in {src_path.name} ({src.count} bands)")
        if window_size is None:
            size = _default_window_size(src)
        elif isinstance(window_size, int):
            size = (window_size, window_size)
        else:
            size = (int(window_size[0]), int(window_size[1]))
        block_rows, block_cols = _output_block_size(size)
        profile: dict[str, Any] = {
            "driver": "GTiff",
            "width": src.width,
            "height": src.height,
            "count": count,
            "dtype": np.dtype(dtype).name,
            "crs": src.crs,
            "transform": src.transform,
            "nodata": nodata,
            "tiled": True,
            "blockxsize": block_cols,
            "blockysize": block_rows,
            "compress": "deflate",
            # Differencing before deflate: smaller files and less deflate work
            # (about 20% less CPU for float32 NDVI); 3 is the floating-point predictor.
            "predictor": 3 if np.issubdtype(np.dtype(dtype), np.floating) else 2,
            "interleave": "pixel" if count > 1 else "band",
            "bigtiff": "if_safer",
        }
        windows = list(iter_windows(src.width, src.height, size))
    profile.update(profile_overrides or {})
    if processes > 1 and "num_threads" not in {k.lower() for k in profile}:
        # Compression runs in the parent while the workers read and compute;
        # GDAL's own threads spread it over the same CPU budget.
        profile["num_threads"] = processes

    job = _WindowJob(func, band_list, dtype, count, nodata)
    if progress is None and runner_wants_progress():
        progress = ProgressReporter()
    tick = _WindowCounter(len(windows), progress)
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed at the end: a failed run never
    # leaves a half-written raster under the name a later step would read.
    partial = dst_path.with_name(f".{dst_path.name}.partial")
    try:
        with _bounded_gdal_cache():
            if processes == 1:
                _run_serial(src_path, partial, profile, job, windows, tick)
            else:
                _run_parallel(src_path, partial, profile, job, windows, processes, method, tick)
        os.replace(partial, dst_path)
    finally:
        partial.unlink(missing_ok=True)
    return dst_path


def _default_start_method() -> str:
    # fork on Linux: workers start at once and inherit the author's function,
    # so lambdas, closures and functions of unimportable modules work too.
    # Elsewhere fork is unsafe (macOS system libraries) or missing (Windows).
    return "fork" if sys.platform.startswith("linux") else "spawn"


def _require_picklable(func: WindowFunction) -> None:
    try:
        pickle.dumps(func)
    except Exception as exc:  # noqa: BLE001 - any pickling failure means the same thing
        raise TypeError(
            "map_windows: with processes > 1 the function must be picklable "
            f"(a module-level function or functools.partial of one), got {func!r}: {exc}"
        ) from exc


class _WindowCounter:
    """Counts written windows and passes done/total to a progress callback (if any)."""

    def __init__(self, total: int, progress: Callable[[int, int], None] | None) -> None:
        self.total, self.done, self.progress = total, 0, progress
        if progress is not None and total:
            progress(0, total)

    def __call__(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


def _run_serial(src_path: Path, dst: Path, profile: dict[str, Any], job: _WindowJob, windows: list[Window],
                tick: _WindowCounter) -> None:
    with rasterio.open(src_path) as src, rasterio.open(dst, "w", **profile) as out:
        for window in windows:
            out.write(job.compute(src, window), window=window)
            tick()


def _run_parallel(
    src_path: Path,
    dst: Path,
    profile: dict[str, Any],
    job: _WindowJob,
    windows: list[Window],
    processes: int,
    start_method: str,
    tick: _WindowCounter,
) -> None:
    context = multiprocessing.get_context(start_method)
    pending: set[Future[tuple[tuple[int, int, int, int], NDArray[Any]]]] = set()
    limit = processes * _IN_FLIGHT_PER_PROCESS
    todo = iter((int(w.col_off), int(w.row_off), int(w.width), int(w.height)) for w in windows)
    with ProcessPoolExecutor(
        max_workers=processes,
        mp_context=context,
        initializer=_worker_start,
        initargs=(str(src_path), job),
    ) as pool:
        # The first submit starts every worker; doing it before the output is
        # opened means no forked worker inherits an open dataset being written
        # or GDAL's compression threads busy on it.
        first = next(todo, None)
        if first is not None:
            pending.add(pool.submit(_worker_compute, first))
        with rasterio.open(dst, "w", **profile) as out:
            _write_results(pool, out, todo, pending, limit, tick)


def _write_results(
    pool: ProcessPoolExecutor,
    out: Any,
    todo: Iterator[tuple[int, int, int, int]],
    pending: set[Future[tuple[tuple[int, int, int, int], NDArray[Any]]]],
    limit: int,
    tick: _WindowCounter,
) -> None:
    """Keep at most ``limit`` windows in flight and write each result as it arrives."""
    try:
        for spec in todo:
            pending.add(pool.submit(_worker_compute, spec))
            if len(pending) >= limit:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    spec_done, result = future.result()
                    out.write(result, window=Window(*spec_done))
                    tick()
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                spec_done, result = future.result()
                out.write(result, window=Window(*spec_done))
                tick()
    except BaseException:
        for future in pending:
            future.cancel()
        raise


def _source_profile(array: NDArray[Any], transform: Any, crs: Any, nodata: float | None) -> dict[str, Any]:
    return {
        "driver": "GTiff",
        "width": array.shape[2],
        "height": array.shape[1],
        "count": array.shape[0],
        "dtype": array.dtype.name,
        "transform": transform,
        "crs": crs,
        "nodata": nodata,
    }


def write_cog(
    source: str | os.PathLike[str] | NDArray[Any],
    dst_path: str | os.PathLike[str],
    *,
    transform: Any = None,
    crs: Any = None,
    nodata: float | None = None,
    compress: str = "deflate",
    blocksize: int = 512,
    overview_resampling: str | None = None,
) -> Path:
    """Write a Cloud-Optimized GeoTIFF from a raster file or a (bands, rows, cols) array.

    Parameters:
        source: a raster file path, or an array of shape (bands, rows, cols) or (rows, cols).
        dst_path: the COG to write (parent folders are created); returned.
        transform: the affine transform of an array source (required for arrays; ignored for files).
        crs: the CRS of an array source (ignored for files).
        nodata: the nodata value of an array source (ignored for files).
        compress: the GDAL compression (default deflate).
        blocksize: the COG's tile size in pixels.
        overview_resampling: the overviews' resampling; default ``average`` for floating-point
            data, ``nearest`` for integer data (class values must not be averaged).
    """
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy as rio_copy

    dst_path = Path(dst_path)
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {
        "driver": "COG",
        "compress": compress,
        "blocksize": blocksize,
        "bigtiff": "if_safer",
        "overviews": "auto",
    }
    partial = dst_path.with_name(f".{dst_path.name}.partial")
    try:
        if isinstance(source, (str, os.PathLike)):
            with rasterio.open(source) as src:
                options["overview_resampling"] = overview_resampling or _default_resampling(src.dtypes[0])
                with _bounded_gdal_cache():
                    rio_copy(src, partial, **options)
        else:
            array = np.asarray(source)
            if array.ndim == 2:
                array = array[np.newaxis]
            if array.ndim != 3:
                raise InvalidArgument(f"write_cog: expected a (bands, rows, cols) array, got shape {array.shape}")
            if transform is None:
                raise InvalidArgument("write_cog: an array needs a transform (and usually a crs)")
            options["overview_resampling"] = overview_resampling or _default_resampling(array.dtype.name)
            with MemoryFile() as memfile:
                with memfile.open(**_source_profile(array, transform, crs, nodata)) as mem:
                    mem.write(array)
                with memfile.open() as mem:
                    rio_copy(mem, partial, **options)
        os.replace(partial, dst_path)
    finally:
        partial.unlink(missing_ok=True)
    return dst_path


def _default_resampling(dtype: str) -> str:
    # Averaging class values (masks, labels) invents classes that do not exist.
    return "average" if np.issubdtype(np.dtype(dtype), np.floating) else "nearest"


def write_quicklook(
    src_path: str | os.PathLike[str],
    dst_png: str | os.PathLike[str],
    *,
    size: int = 512,
    bands: Sequence[int] | None = None,
    percentiles: tuple[float, float] = (2.0, 98.0),
    per_band: bool = False,
) -> Path:
    """Write a PNG preview at most ``size`` pixels on its long side, with a percentile stretch.

    Parameters:
        src_path: the raster to preview.
        dst_png: the PNG to write; returned.
        size: the long side of the preview in pixels.
        bands: 1-based bands shown as red, green, blue (or one band as grey); default 3, 2, 1 when
            the raster has three bands or more, else band 1.
        percentiles: the low and high percentiles of valid pixels stretched to 0 and 255.
        per_band: stretch each band on its own (default: one stretch for all bands, which keeps
            natural colours).
    """
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.enums import Resampling

    dst_png = Path(dst_png)
    dst_png.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(src_path) as src:
        if bands is None:
            bands = (3, 2, 1) if src.count >= 3 else (1,)
        band_list = list(bands)
        for band in band_list:
            if not 1 <= band <= src.count:
                raise InvalidArgument(f"write_quicklook: band {band} does not exist ({src.count} bands)")
        scale = min(1.0, size / max(src.width, src.height))  # never larger than the raster
        rows = max(1, round(src.height * scale))
        cols = max(1, round(src.width * scale))
        # A decimated read: GDAL uses overviews when there are any, so even a
        # huge scene costs only the preview's pixels.
        with _bounded_gdal_cache():
            data = src.read(band_list, out_shape=(len(band_list), rows, cols), resampling=Resampling.nearest)
            valid = src.read_masks(1, out_shape=(rows, cols), resampling=Resampling.nearest) > 0
    data = data.astype("float64")
    valid &= np.isfinite(data).all(axis=0)
    image = np.zeros(data.shape, dtype="uint8")
    # One stretch for all bands keeps natural colours (green vegetation, dark
    # water); a stretch per band maximises contrast but shifts the hues.
    joint = None if per_band else data[:, valid]
    for i, band in enumerate(data):
        values = band[valid] if joint is None else joint
        if values.size == 0:
            continue
        low, high = np.percentile(values, percentiles)
        if high <= low:
            high = low + 1.0
        stretched = np.clip((band - low) / (high - low), 0.0, 1.0) * 255.0
        image[i] = np.where(valid, np.round(stretched), 0).astype("uint8")
    if len(band_list) == 2:
        # PNG has grey, grey+alpha, RGB and RGBA: two bands would read as grey+alpha.
        image = image[:1]
    layers = [image] if valid.all() else [image, (valid * 255).astype("uint8")[np.newaxis]]
    stacked = np.concatenate(layers, axis=0)
    partial = dst_png.with_name(f".{dst_png.name}.partial")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(
                partial,
                "w",
                driver="PNG",
                width=cols,
                height=rows,
                count=stacked.shape[0],
                dtype="uint8",
            ) as png:
                png.write(stacked)
        os.replace(partial, dst_png)
    finally:
        partial.unlink(missing_ok=True)
        partial.with_name(partial.name + ".aux.xml").unlink(missing_ok=True)
    return dst_png


def write_vector_quicklook(
    geometries: Sequence[dict[str, Any]],
    dst_png: str | os.PathLike[str],
    *,
    size: int = 512,
    fill: tuple[int, int, int, int] = (255, 160, 0, 150),
    outline: tuple[int, int, int, int] = (190, 80, 0, 255),
) -> Path:
    """Write a PNG of WGS84 GeoJSON geometries (filled, outlined, transparent elsewhere).

    The picture covers exactly the geometries' bounding box, north up, with pixels as wide
    as they are tall on the ground (longitude scaled by cos(latitude)), so a viewer can place
    it at the feature's bounds.

    Parameters:
        geometries: GeoJSON geometry dicts in WGS84 longitude/latitude.
        dst_png: the PNG to write; returned.
        size: the long side of the picture in pixels.
        fill: the RGBA colour inside polygons.
        outline: the RGBA colour of polygon outlines and lines.
    """
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.features import rasterize
    from rasterio.transform import from_bounds
    from shapely.geometry import mapping, shape

    shapes_ = [shape(g) for g in geometries if g]
    shapes_ = [g for g in shapes_ if not g.is_empty]
    if not shapes_:
        raise InvalidArgument("write_vector_quicklook: no geometry to draw")
    west = min(g.bounds[0] for g in shapes_)
    south = min(g.bounds[1] for g in shapes_)
    east = max(g.bounds[2] for g in shapes_)
    north = max(g.bounds[3] for g in shapes_)
    ground_w = max(east - west, 1e-9) * max(math.cos(math.radians((south + north) / 2)), 0.01)
    ground_h = max(north - south, 1e-9)
    scale = size / max(ground_w, ground_h)
    cols, rows = max(1, round(ground_w * scale)), max(1, round(ground_h * scale))
    transform = from_bounds(west, south, max(east, west + 1e-9), max(north, south + 1e-9), cols, rows)
    areas = [mapping(g) for g in shapes_ if g.geom_type in ("Polygon", "MultiPolygon")]
    lines = [mapping(g.boundary) if g.geom_type in ("Polygon", "MultiPolygon") else mapping(g) for g in shapes_]
    classes = np.zeros((rows, cols), dtype="uint8")
    if areas:
        rasterize([(g, 1) for g in areas], out=classes, transform=transform, all_touched=False)
    rasterize([(g, 2) for g in lines], out=classes, transform=transform, all_touched=True)
    image = np.zeros((4, rows, cols), dtype="uint8")
    for value, colour in ((1, fill), (2, outline)):
        where = classes == value
        for band in range(4):
            image[band][where] = colour[band]
    dst_png = Path(dst_png)
    dst_png.parent.mkdir(parents=True, exist_ok=True)
    partial = dst_png.with_name(f".{dst_png.name}.partial")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(partial, "w", driver="PNG", width=cols, height=rows, count=4, dtype="uint8") as png:
                png.write(image)
        os.replace(partial, dst_png)
    finally:
        partial.unlink(missing_ok=True)
        partial.with_name(partial.name + ".aux.xml").unlink(missing_ok=True)
    return dst_png
