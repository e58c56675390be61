"""Tokenisers that turn raw-count rows into model inputs exactly as the models were trained."""

from extract.tokenize.genes import TokenizedCells, as_count_rows
from extract.tokenize.geneformer import GeneformerDictionaries, GeneformerTokenizer
from extract.tokenize.scgpt import ScGPTTokenizer, bin_values, load_vocab

__all__ = [
    "GeneformerDictionaries",
    "GeneformerTokenizer",
    "ScGPTTokenizer",
    "TokenizedCells",
    "as_count_rows",
    "bin_values",
    "load_vocab",
]
