"""Write lambda/openapi.json: the endpoint's OpenAPI document, generated from the resolver.

python -m pneumonia.serving.openapi
"""

from __future__ import annotations

import json
from pathlib import Path

from pneumonia.serving import app
from pneumonia.serving.requests import PredictRequest

OUTPUT = Path(__file__).resolve().parents[2] / "lambda" / "openapi.json"


def document() -> dict:
    """The resolver's schema, plus the /predict request body it cannot infer.

    /predict reads its body by content type (JSON or a raw image), so the body is
    not a typed handler parameter; its two forms are described here.
    """
    schema = json.loads(
        app.app.get_openapi_json_schema(
            title="Pneumonia prediction endpoint",
            version="1.0.0",
            description="Classifies pediatric frontal chest X-rays (JPEG, PNG or DICOM) as "
            "NORMAL or PNEUMONIA, with a calibrated probability, a decision that may be "
            "INDETERMINATE, and on request a heatmap; refuses what is not a chest X-ray (422). "
            "Not a diagnostic device.",
        )
    )
    schema["paths"]["/predict"]["post"]["requestBody"] = {
        "required": True,
        "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "application/dicom": {"schema": {"type": "string", "format": "binary"}},
        },
    }
    schema["paths"]["/predict"]["post"]["parameters"] = [
        {
            "name": "explain",
            "in": "query",
            "required": False,
            "description": "add a heatmap of where the evidence for pneumonia is",
            "schema": {"type": "boolean", "default": False},
        }
    ]
    return schema


if __name__ == "__main__":
    OUTPUT.write_text(json.dumps(document(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {OUTPUT}")
