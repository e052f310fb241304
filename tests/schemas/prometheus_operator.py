"""Write the JSON Schemas of the Prometheus Operator objects k8s/monitoring uses, as test data.

The schemas come from PyPI's ``cloudcoil.models.prometheus_operator`` (pydantic models generated
from the operator's CRDs, release named in the package version), not a dependency of the project:
run this in a throwaway virtual environment, once per operator release we move to.

    python -m venv /tmp/crd && /tmp/crd/bin/pip install \\
        'cloudcoil.models.prometheus_operator==0.80.1.0'
    /tmp/crd/bin/python tests/schemas/prometheus_operator.py tests/schemas/prometheus-operator-v0.80.1

Descriptions are dropped (size), and every object with named properties refuses others, as
``kubectl apply --validate=strict`` does against the CRD's structural schema.
"""

import json
import sys
from pathlib import Path
from typing import Any


def strict(node: Any) -> Any:
    """``node`` without descriptions and titles, objects closed to unknown properties."""
    if isinstance(node, dict):
        out = {k: strict(v) for k, v in node.items() if k not in ("description", "title")}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [strict(v) for v in node]
    return node


def main() -> None:
    from cloudcoil.models.prometheus_operator import v1  # type: ignore[import-not-found]

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for cls in (v1.ServiceMonitor, v1.PrometheusRule):
        schema = strict(cls.model_json_schema(by_alias=True))
        (out / f"{cls.__name__.lower()}.json").write_text(json.dumps(schema, indent=1) + "\n")


if __name__ == "__main__":
    main()
