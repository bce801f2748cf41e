"""mmjax input data: sources, chat templates, tokenization, image preprocessing, packing, grain.

The entry points:

* ``DataConfig`` / ``make_iterator(cfg, ...)``: batches for training (schema in ``pipeline``);
* ``SampleProcessor``: one raw sample -> one example (for generation and debugging);
* ``preprocess.ImageProcessor`` / ``preprocess.preset``: per-family image preprocessing;
* ``ChatTemplate``, ``Tokenizer``; sources ``JsonSource``, ``ArrayRecordSource``, ``TfdsSource``.

``mmjax data pack`` and ``mmjax data check`` live in ``mmjax.data.cli``.
"""

from mmjax.data.pipeline import DataConfig, DataIterator, SourceConfig, build_dataset, make_iterator, to_global
from mmjax.data.preprocess import ImageConfig, ImageProcessor, preset
from mmjax.data.sample import SampleProcessor
from mmjax.data.sources import ArrayRecordSource, JsonSource, TfdsSource, open_source
from mmjax.data.templates import ChatTemplate
from mmjax.data.tokenizer import Tokenizer
from mmjax.data.validation import REASONS, SampleError, SkipCounter

__all__ = [
    'ArrayRecordSource', 'ChatTemplate', 'DataConfig', 'DataIterator', 'ImageConfig', 'ImageProcessor',
    'JsonSource', 'REASONS', 'SampleError', 'SampleProcessor', 'SkipCounter', 'SourceConfig', 'TfdsSource',
    'Tokenizer', 'build_dataset', 'make_iterator', 'open_source', 'preset', 'to_global',
]
