"""A loaded model: model.onnx and the model.json that describes it, and one image classified.

The order for each image: decode (caps checked from the bytes first) -> the cheap
"is this a chest X-ray?" checks -> the one preprocessing path -> the ONNX graph, which
gives the calibrated probability, the gate's feature distance and, when asked, the class
activation map -> the intended-use head, the view check (frontal or lateral, on the decoded
image) and the learned check -> label, decision and heatmap. A refused image's reason is
named by the reason head (`pneumonia.decision.reason`, reason.onnx), run only then.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from pathlib import Path

import numpy as np
import onnxruntime

from pneumonia.decision import reason
from pneumonia.decision.contract import MetadataError, ModelMetadata
from pneumonia.decision.use import ANSWERED, REFUSAL_REASONS, kind_of, refused_kind
from pneumonia.decision.view import ViewCheck, decide_kind, view_features, view_grid
from pneumonia.images import heatmap
from pneumonia.images.config import PreprocessConfig
from pneumonia.images.formats import ImageError
from pneumonia.images.prepare import model_region
from pneumonia.images.screening import (
    NOT_A_CHEST_XRAY,
    OUTSIDE_TRAINING_POPULATION,
    screen_and_prepare,
)
from pneumonia.serving import inference
from pneumonia.serving.requests import ClientError

STATUS_FOR_REASON = {
    "empty": HTTPStatus.BAD_REQUEST,
    "not_an_image": HTTPStatus.BAD_REQUEST,
    "corrupt": HTTPStatus.BAD_REQUEST,
    "unsupported_format": HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    "unsupported_transfer_syntax": HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    "too_large": HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    "too_complex": HTTPStatus.UNPROCESSABLE_ENTITY,
    "multi_frame": HTTPStatus.UNPROCESSABLE_ENTITY,
    "colour": HTTPStatus.UNPROCESSABLE_ENTITY,
    "wrong_modality": HTTPStatus.UNPROCESSABLE_ENTITY,
    "lateral_view": HTTPStatus.UNPROCESSABLE_ENTITY,
    OUTSIDE_TRAINING_POPULATION: HTTPStatus.UNPROCESSABLE_ENTITY,
    NOT_A_CHEST_XRAY: HTTPStatus.UNPROCESSABLE_ENTITY,
}


# What the intended-use head's and the reason head's kinds are refused as: (reason, message).
USE_REFUSALS = {
    kind: (REFUSAL_REASONS[kind], message)
    for kind, message in {
        ANSWERED: "the image looks like a frontal chest X-ray, but not like the ones the model "
        "was trained on (its framing or its exposure)",
        "adult_chest": "the image looks like an adult chest X-ray; "
        "the model was trained on pediatric ones",
        "lateral_chest": "the image looks like a lateral view; send a frontal one",
        "other_body_part": "the image looks like a radiograph of another body part, "
        "not a chest X-ray",
    }.items()
}


@dataclass(frozen=True)
class Prediction:
    """What the endpoint answers for one image."""

    label: str  # NORMAL or PNEUMONIA, at the threshold
    probability: float  # calibrated P(PNEUMONIA)
    decision: str  # NORMAL, PNEUMONIA or INDETERMINATE, by the decision band
    heatmap_png: bytes | None = None  # 8-bit gray PNG, the image's aspect ratio


@dataclass(frozen=True)
class GraphOutputs:
    """One run of the graph on N images."""

    probabilities: np.ndarray  # (N,) calibrated P(PNEUMONIA), a site's recalibration applied
    distances: np.ndarray  # (N,) the gate's feature distance
    uses: np.ndarray | None  # (N, K) the intended-use logits, when the graph has them
    cams: np.ndarray | None  # (N, h, w) class activation maps, when asked for
    features: np.ndarray | None  # (N, F) the features, when asked for

    def one(self, index: int) -> tuple[float, float, np.ndarray | None]:
        """(probability, distance, intended-use logits) of one image: what `judge` takes."""
        use = None if self.uses is None else self.uses[index]
        return float(self.probabilities[index]), float(self.distances[index]), use


REASON_INPUT_BYTES = reason.REASON_SIZE**2 * 4  # the reason head's float32 input, 64 KiB


@dataclass(frozen=True)
class Layout:
    """What the view check reads of the decoded image, and what it calls it; the decoded
    image (by reference) or its reason-head input, for naming a refusal."""

    lateral: bool = False
    features: np.ndarray | None = None  # (1, F) view features
    gray: np.ndarray | None = None  # the decoded image
    reason_image: np.ndarray | None = None  # (S, S, 1) `reason.reason_input` of it

    def detached(self, reason_head: bool) -> Layout:
        """What a batch keeps of each image until the model has run: without the decoded
        image, with `reason_head` its reason-head input computed instead; a decoded image
        that holds no more bytes than that input (a 256 px square or less) is kept as it is, and
        the input made only if the image is refused."""
        if self.gray is None:
            return self
        if reason_head and self.gray.base is None and self.gray.nbytes <= REASON_INPUT_BYTES:
            return self
        return replace(self, gray=None, reason_image=self.reason_pixels() if reason_head else None)

    def reason_pixels(self) -> np.ndarray | None:
        """The reason head's (S, S, 1) input: kept, or made from the decoded image."""
        if self.reason_image is not None or self.gray is None:
            return self.reason_image
        return reason.reason_input(self.gray)


@dataclass(frozen=True)
class Namer:
    """What names a refusal by the model: the view check (`ViewCheck`, None: none) and the
    reason head's session (reason.onnx, None: the intended-use head's kind stands). Serving's
    `Classifier` holds one; evaluate builds one of the graph it has just fitted, so that it
    names the held-out refusals as the endpoint will."""

    session: onnxruntime.InferenceSession | None = None
    view: ViewCheck | None = None

    def layout(self, gray: np.ndarray) -> Layout:
        """Whether the view check calls the decoded (H, W) image a lateral view."""
        if self.view is None:
            return Layout(gray=gray)
        features = view_features(view_grid(gray)[np.newaxis])
        return Layout(bool(self.view.lateral(features)[0]), features, gray)

    def logits(self, layout: Layout) -> np.ndarray | None:
        """The reason head's (K,) logits, one per USE_KINDS entry (None without the head)."""
        image = layout.reason_pixels() if self.session is not None else None
        if self.session is None or image is None or layout.features is None:
            return None
        feeds = {
            reason.REASON_INPUTS[0]: image[np.newaxis],
            reason.REASON_INPUTS[1]: layout.features.astype(np.float32),
        }
        return self.session.run([reason.REASON_OUTPUT], feeds)[0][0]

    def named(self, kind: str, layout: Layout) -> str:
        """What a refused image is named: by the reason head and the view check
        (`reason.reason_named`) where there is the head, else `kind` (the intended-use
        head's)."""
        named = reason.reason_named(self.logits(layout), layout.lateral)
        return kind if named is None else named


@dataclass(frozen=True)
class Classifier:
    """The ONNX session and the metadata that says how to feed and read it."""

    session: onnxruntime.InferenceSession
    metadata: ModelMetadata
    reason_session: onnxruntime.InferenceSession | None = None  # reason.onnx, when named
    # model.json's view check as arrays (None: no check) and reason.onnx, built once
    namer: Namer = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """The view check from the metadata, so each request need not build it again."""
        spec = self.metadata.view_check
        view = None if spec is None else spec.check()
        object.__setattr__(self, "namer", Namer(self.reason_session, view))

    @classmethod
    def load(cls, model_dir: Path, threads: int = 1) -> Classifier:
        """The session and its metadata; refuses a model.json that is malformed, names other
        bytes than the model.onnx beside it, or names outputs the graph does not have."""
        metadata = ModelMetadata.load(model_dir / "model.json")  # types and ranges checked
        onnx_bytes = (model_dir / "model.onnx").read_bytes()
        metadata.check_describes(onnx_bytes)  # the served bytes are the ones hashed
        session = inference.session(onnx_bytes, threads)
        names = {output.name for output in session.get_outputs()}
        missing = set(metadata.outputs.model_dump(exclude_none=True).values()) - names
        inputs = {i.name: i.shape for i in session.get_inputs()}
        if missing or metadata.input_name not in inputs:
            raise MetadataError(f"model.json names tensors the graph lacks: {sorted(missing)}")
        size = metadata.preprocessing.image_size
        if list(inputs[metadata.input_name][1:]) != [size, size, 1]:
            raise MetadataError(
                f"model.json's preprocessing.image_size {size} does not fit the graph's input "
                f"{inputs[metadata.input_name]}"
            )
        return cls(session, metadata, reason_session(model_dir, metadata, threads))

    @classmethod
    def from_environment(cls) -> Classifier:
        """The model a Lambda handler serves, once per cold start: from `model_dir()`, with
        ONNX_THREADS intra-op threads (default 1)."""
        return cls.load(model_dir(), threads=int(os.environ.get("ONNX_THREADS", "1")))

    def classify(self, image_bytes: bytes, explain: bool = False) -> Prediction:
        """The prediction for one encoded image; ClientError for bytes that are not a usable
        chest X-ray (4xx, with the reason)."""
        metadata = self.metadata
        gray, pixels = prepare(image_bytes, metadata.preprocessing, metadata.max_patient_age_years)
        outputs = self.infer(pixels[np.newaxis], explain)
        prediction = self.judge(*outputs.one(0), layout=self.layout(gray))
        if outputs.cams is None:
            return prediction
        # The map comes from the same run; a plain request does not fetch it.
        box = model_region(gray, self.metadata.preprocessing)  # where the map lies
        region = (box.top, box.left, box.bottom, box.right)
        heat = heatmap.heatmap(outputs.cams[0], gray.shape[1], gray.shape[0], region=region)
        return replace(prediction, heatmap_png=heatmap.png(heat))

    def infer(
        self, batch: np.ndarray, explain: bool = False, features: bool = False
    ) -> GraphOutputs:
        """The graph's outputs for (N, S, S, 1) prepared images, in one run; the maps and the
        features only when asked for."""
        roles = self.metadata.outputs
        wanted = [roles.probability, roles.ood_distance]
        wanted += [roles.use] if roles.use else []
        wanted += [roles.cam] if explain else []
        wanted += [roles.features] if features else []
        results = self.session.run(wanted, {self.metadata.input_name: batch.astype(np.float32)})
        named = dict(zip(wanted, results, strict=True))
        return GraphOutputs(
            probabilities=self.metadata.served(np.clip(named[roles.probability].reshape(-1), 0, 1)),
            distances=named[roles.ood_distance].reshape(-1),
            uses=named.get(roles.use) if roles.use else None,
            cams=named.get(roles.cam),
            features=named.get(roles.features),
        )

    def layout(self, gray: np.ndarray) -> Layout:
        """Whether the view check calls the decoded (H, W) image a lateral view."""
        return self.namer.layout(gray)

    def judge(
        self,
        probability: float,
        distance: float,
        use: np.ndarray | None = None,
        layout: Layout | None = None,
    ) -> Prediction:
        """Label and decision for one image's outputs; ClientError (422) when the intended-use
        head names another kind than a pediatric frontal chest X-ray, when the view check
        calls it lateral (unless the head names another body part: `decide_kind`), or when its
        features are too far from the training X-rays' (`not_a_chest_xray` for a graph
        without a head).
        A refusal's reason is the reason head's (`Namer.named`), else the head's kind (its
        runner-up for the gate's refusals, `refused_kind`). The error says which check refused
        (`ClientError.check`)."""
        layout = layout if layout is not None else Layout()
        head_kind = kind_of(use) if use is not None else None
        kind = decide_kind(head_kind, layout.lateral)
        if kind is not None and kind != ANSWERED:
            status = HTTPStatus.UNPROCESSABLE_ENTITY
            # the head refuses first (as evaluate counts it); else the view check's call did
            check = "intended_use" if head_kind not in (None, ANSWERED) else "view_check"
            reason_code, message = USE_REFUSALS[self.namer.named(kind, layout)]
            raise ClientError(status, message, reason_code, check=check)
        gate = self.metadata.ood_gate
        if not distance <= gate.threshold:  # NaN is refused too
            far = (
                "the image is not like the chest X-rays the model was trained on "
                f"(feature distance {distance:.1f}, limit {gate.threshold:.1f})"
            )
            if use is None:
                raise ClientError(HTTPStatus.UNPROCESSABLE_ENTITY, far, NOT_A_CHEST_XRAY, "gate")
            # the gate knows only distance; the heads name what the image is like
            reason_code, message = USE_REFUSALS[self.namer.named(refused_kind(use), layout)]
            raise ClientError(
                HTTPStatus.UNPROCESSABLE_ENTITY, f"{far}; {message}", reason_code, "gate"
            )
        return Prediction(
            label=self.metadata.label_for(probability),
            probability=probability,
            decision=self.metadata.decision_for(probability),
        )


def reason_session(
    model_dir: Path, metadata: ModelMetadata, threads: int
) -> onnxruntime.InferenceSession | None:
    """reason.onnx's session when model.json names it; refuses other bytes than it names."""
    spec = metadata.reason
    if spec is None:
        return None
    data = (model_dir / spec.file).read_bytes()
    if hashlib.sha256(data).hexdigest() != spec.sha256:
        raise MetadataError(f"{spec.file} is not the file model.json names (sha256 differs)")
    return inference.session(data, threads)


def model_dir() -> Path:
    """The folder a handler serves from: MODEL_DIR when set, else ./model in the Lambda task
    root (where the image puts it), else ./models."""
    if os.environ.get("MODEL_DIR"):
        return Path(os.environ["MODEL_DIR"])
    task_root = os.environ.get("LAMBDA_TASK_ROOT")
    return Path(task_root) / "model" if task_root else Path("models")


def prepare(
    data: bytes, config: PreprocessConfig, max_age_years: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`screen_and_prepare`, with what it refuses as a ClientError of the status its reason
    maps to (STATUS_FOR_REASON)."""
    try:
        return screen_and_prepare(data, config, max_age_years)
    except ImageError as error:
        status = STATUS_FOR_REASON.get(error.reason, HTTPStatus.BAD_REQUEST)
        raise ClientError(status, str(error), error.reason) from None
