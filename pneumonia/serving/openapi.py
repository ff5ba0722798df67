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
            description="Classifies pediatric chest X-rays as NORMAL or PNEUMONIA. "
            "Not a diagnostic device.",
        )
    )
    schema["paths"]["/predict"]["post"]["requestBody"] = {
        "required": True,
        "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        },
    }
    return schema


if __name__ == "__main__":
    OUTPUT.write_text(json.dumps(document(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {OUTPUT}")
