"""Every file the pipeline reads or writes; dvc.yaml names the same paths."""

from pathlib import Path

DATA = Path("data")
SOURCE = DATA / "source" / "chest-xray-pneumonia"  # the dataset, DVC-tracked (.dvc beside it)
RAW = DATA / "raw"  # accepted images, data/raw/<LABEL>/<file>
QUARANTINE = DATA / "quarantine"  # rejected files, kept as found
QUARANTINE_LIST = QUARANTINE / "quarantine.csv"  # file, label, reason, detail
MANIFEST = DATA / "manifest.csv"
INGEST_REPORT = DATA / "ingest_report.json"  # names files (patient ids): DVC cache, not git
DOWNLOADS = DATA / "downloads"  # cache of fetched archives (git/dvc ignored)
# Real radiographs from public repositories (adults, other body parts), in git with their
# manifest (repository, commit, path, licence): the intended-use check's fit and figures.
EXTERNAL_RADIOGRAPHS = DATA / "external" / "radiographs"
EXTERNAL_MANIFEST = EXTERNAL_RADIOGRAPHS / "manifest.csv"

PREPARED = DATA / "prepared"  # one <split>.npz per split + params.json
PREPARED_PARAMS = PREPARED / "params.json"

MODELS = Path("models")
KERAS_MODEL = MODELS / "model.keras"
TRAIN_INFO = MODELS / "train_info.json"  # device, epochs run, MLflow run id
ONNX_MODEL = MODELS / "model.onnx"
MODEL_METADATA = MODELS / "model.json"
MODEL_CARD = MODELS / "MODEL_CARD.md"
GATE = MODELS / "gate.npz"  # the feature mean and whitening of the "not a chest X-ray" gate

METRICS = Path("metrics")
TRAIN_LIVE = METRICS / "train"  # dvclive dir of the train stage (every curve and figure)
TRAIN_HEADLINE = METRICS / "train.json"  # the few numbers `dvc metrics` lists for train
EVALUATE_LIVE = METRICS / "evaluate"  # dvclive dir of the evaluate stage
PREDICTIONS = METRICS / "evaluate" / "predictions.csv"
# The validation split's answers and features: pneumonia.monitor's --reference.
REFERENCE = METRICS / "evaluate" / "reference.jsonl"
EXPORT_METRICS = METRICS / "export_onnx.json"
INGEST_SUMMARY = METRICS / "ingest.json"  # the ingest report's counts, no file names

SPLITS = ("train", "val", "test")
# Held-out blocks of the earliest and latest patient ids (ingest.shift_fraction): a cohort
# shift in time. Empty when the source's file names carry no numbered patient ids.
SHIFT_SPLITS = ("early", "late")
HELD_OUT = ("test", *SHIFT_SPLITS)  # every split evaluate reports at the validation threshold


def prepared_split(split: str) -> Path:
    """The array file of one split."""
    return PREPARED / f"{split}.npz"
