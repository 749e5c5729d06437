"""What kind of file a name says it is, as a person reading a model repository would say.

modctl classifies by extension alone, in a fixed order (config patterns first, so
``data/train.jsonl`` is a config and ``spiece.model`` a weight). These rules look at the whole
name and where the file lies: tokenizer files are configuration whatever their extension, a
``.json`` under ``data/`` is a dataset, ``requirements.txt`` is code, an image is
documentation. Weights are not decided here: their headers decide (:mod:`.weights`); the
extensions below only name what *may* be a weight in a format no plugin reads (PyTorch
pickles, Keras, TFLite…).
"""

from __future__ import annotations

import posixpath

CONFIG, MODEL, CODE, DATASET, DOC = "config", "model", "code", "dataset", "doc"
KINDS = (CONFIG, MODEL, CODE, DATASET, DOC)  # the Modelfile's order of file directives
DIRECTIVE = {CONFIG: "CONFIG", MODEL: "MODEL", CODE: "CODE", DATASET: "DATASET", DOC: "DOC"}

# Tokenizer and processor files: configuration, whatever their extension says.
_CONFIG_NAMES = {
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
    "tokenizer.model", "spiece.model", "sentencepiece.model", "sentencepiece.bpe.model",
    "preprocessor_config.json", "processor_config.json", "feature_extractor_config.json",
    "chat_template.json", "chat_template.jinja", "training_args.bin", "params.json",
}
_CONFIG_SUFFIXES = (
    ".json", ".json5", ".jsonc", ".yaml", ".yml", ".toml", ".ini", ".cfg", ".conf", ".config",
    ".jinja", ".tiktoken", ".properties", ".prototxt", ".modelcard",
)
_CODE_NAMES = {"makefile", "dockerfile", "cmakelists.txt", "containerfile"}
_CODE_PREFIXES = ("requirements", "dockerfile.", "makefile.")
_CODE_SUFFIXES = (
    ".py", ".pyi", ".ipynb", ".sh", ".bash", ".zsh", ".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh",
    ".cu", ".cuh", ".js", ".mjs", ".ts", ".go", ".rs", ".java", ".kt", ".scala", ".swift", ".rb", ".jl",
    ".lua", ".r", ".pl", ".ps1", ".bat", ".cmake", ".mk", ".patch", ".diff", ".so", ".dylib", ".dll",
)
_DOC_PREFIXES = ("readme", "license", "licence", "notice", "copying", "changelog", "citation",
                 "use_policy", "acceptable_use_policy", "authors", "contributing", "model_card")
_DOC_SUFFIXES = (
    ".md", ".markdown", ".rst", ".txt", ".pdf", ".html", ".htm", ".tex", ".bib", ".cff", ".adoc",
    ".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".bmp", ".ico", ".tif", ".tiff",
    ".doc", ".docx", ".rtf", ".odt",
)
_DATASET_SUFFIXES = (".parquet", ".jsonl", ".ndjson", ".csv", ".tsv", ".arrow", ".feather", ".avro",
                     ".tfrecord", ".wds")
# Folders whose files are data, not configuration (their README and LICENSE stay documents).
_DATASET_DIRS = {"data", "dataset", "datasets", "eval_data", "train_data"}
# Weights in formats no format plugin reads: recognised by extension only.
_OTHER_WEIGHT_SUFFIXES = (
    ".bin", ".pt", ".pth", ".pt2", ".pte", ".ptl", ".mar", ".ckpt", ".checkpoint", ".h5", ".hdf5", ".keras",
    ".tflite", ".pb", ".msgpack", ".npz", ".npy", ".pkl", ".pickle", ".joblib", ".ot", ".engine", ".trt",
    ".mlmodel", ".caffemodel", ".ggml", ".llamafile", ".model", ".tensor", ".weights", ".nemo",
)
# External data of an ONNX model, by the names exporters give it (the .onnx file names it too).
_ONNX_DATA_SUFFIXES = (".onnx_data", ".onnx.data", ".onnx.weight", ".onnx_weights")


def kind_by_name(path: str) -> tuple[str, str] | None:
    """(kind, why) from the name and folder of *path* alone, or None when nothing fits."""
    name = posixpath.basename(path)
    low = name.lower()
    in_data = any(part.lower() in _DATASET_DIRS for part in path.split("/")[:-1])
    if low.endswith(_ONNX_DATA_SUFFIXES):
        return MODEL, "ONNX external data"
    if low.startswith(_DOC_PREFIXES) and not low.endswith(_CODE_SUFFIXES):
        return DOC, "documentation"
    if low in _CODE_NAMES or (low.startswith(_CODE_PREFIXES) and low.endswith((".txt", ".in"))) \
            or low.endswith(_CODE_SUFFIXES):
        return CODE, "code"
    if low in _CONFIG_NAMES or (low.startswith("tokenizer") and not in_data):
        return CONFIG, "tokenizer or model configuration"
    if low.endswith(_DATASET_SUFFIXES):
        return DATASET, "data"
    if in_data:
        return DATASET, f"in a data folder ({posixpath.dirname(path)}/)"
    if low.endswith(_CONFIG_SUFFIXES):
        return CONFIG, "configuration"
    if low.endswith(_DOC_SUFFIXES):
        return DOC, "documentation"
    if low.endswith(_OTHER_WEIGHT_SUFFIXES):
        return MODEL, "weights (by extension: no format plugin reads them)"
    return None
