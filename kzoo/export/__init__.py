"""Export kzoo models: SavedModel in TF Serving's layout, LiteRT files, parity reports.

A model is exportable when it has `export_endpoints() -> {signature: (fn, input_specs)}`
(see `kzoo/export/_core.py`). This package sits on top of kzoo: nothing in kzoo imports
it, and it is the one place besides `data`, `training` and `metrics` that imports
TensorFlow.

Example:
```python
from kzoo.export import export_all, format_parity_table

results = export_all(model, "exported", quantize=("none", "float16"))
# Full-integer: int8.tflite, calibrated on batches of {signature: {input_name: array}}
results = export_all(model, "exported", quantize="int8", representative_data=batches)
print(format_parity_table([r.parity for r in results.values()]))
```
"""

from kzoo.export.litert import (
    IO_TYPES,
    QUANTIZE_MODES,
    LiteRTConversionError,
    export_litert,
    litert_op_types,
    litert_signatures,
    run_litert,
)
from kzoo.export.parity import (
    MAX_ABS_ERROR,
    MIN_INDEX_AGREEMENT,
    ParityReference,
    check_parity,
    compute_parity,
    format_parity_table,
    make_parity_batch,
    reference_outputs,
    saved_model_outputs,
    write_parity_json,
)
from kzoo.export.saved_model import ExportResult, export_all, export_saved_model

__all__ = [
    "IO_TYPES",
    "MAX_ABS_ERROR",
    "MIN_INDEX_AGREEMENT",
    "QUANTIZE_MODES",
    "ExportResult",
    "LiteRTConversionError",
    "ParityReference",
    "check_parity",
    "compute_parity",
    "export_all",
    "export_litert",
    "export_saved_model",
    "format_parity_table",
    "litert_op_types",
    "litert_signatures",
    "make_parity_batch",
    "reference_outputs",
    "run_litert",
    "saved_model_outputs",
    "write_parity_json",
]
