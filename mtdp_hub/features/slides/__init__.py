"""Whole-slide images to features: tissue -> tiles at a physical scale -> per-slide feature files.

Needs the ``slides`` extra (``pip install mtdp-hub[slides]``: openslide-python with the
openslide-bin library, h5py, scikit-image). Nothing else in ``mtdp_hub`` imports this package.

- :mod:`.reader`   slide lists (folder or CSV), OpenSlide, microns per pixel, pyramid levels
- :mod:`.tissue`   the tissue segmenter on a thumbnail, tissue polygons and GeoJSON
- :mod:`.tiling`   which tiles, at which level, at what size
- :mod:`.store`    per-slide HDF5 (CLAM / TRIDENT layout) or ``.pt`` files
- :mod:`.qc`       the quality-control PNG and GeoJSON of each slide
- :mod:`.run`      one slide, or many (resumable, locked, sharded over torchrun ranks)

Python use::

    from mtdp_hub.features import FeatureExtractor
    from mtdp_hub.features.slides import Slide, SlideSettings, TileSpec, extract_slide, iterate_tiles, list_slides

    extractor = FeatureExtractor('mtdp_resnet50')
    for entry in list_slides('slides/'):
        extract_slide(extractor, entry, 'feats/', SlideSettings(tiles=TileSpec(mpp=0.5, tile=224)))
    with Slide('slides/a.svs') as slide:
        for (x, y), tile in iterate_tiles(slide):   # level-0 coordinates, RGB tile
            ...
"""

from .reader import Slide, SlideEntry, SlideError, list_slides, mpp_of_magnification
from .run import SlideSettings, extract_slide, iterate_tiles, run_slides
from .store import SlideFeatures, read_slide_features, write_slide_features
from .tiling import TileGrid, TileSpec, tile_grid
from .tissue import TissueSettings, segment_tissue, tissue_fraction, tissue_geojson

__all__ = [
    'Slide',
    'SlideEntry',
    'SlideError',
    'SlideFeatures',
    'SlideSettings',
    'TileGrid',
    'TileSpec',
    'TissueSettings',
    'extract_slide',
    'iterate_tiles',
    'list_slides',
    'mpp_of_magnification',
    'read_slide_features',
    'run_slides',
    'segment_tissue',
    'tile_grid',
    'tissue_fraction',
    'tissue_geojson',
    'write_slide_features',
]
